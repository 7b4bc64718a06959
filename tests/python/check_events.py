#!/usr/bin/env python3
"""Checks a TensorBoard log directory written by quickdraw with TensorBoard's own readers.

Owns: the cross-implementation test of crates/quickdraw-data/src/events.rs.

Two readers are used, both with size_guidance 0 (keep everything):
  * tensorboard.backend.event_processing.event_accumulator.EventAccumulator (the legacy reader:
    scalars, images, histograms as written);
  * tensorboard.backend.event_processing.plugin_event_accumulator.EventAccumulator (what the
    TensorBoard UI uses: values migrated to tensors for the scalars/images/histograms plugins).

Usage:
  check_events.py LOGDIR [--expect expected.json] [--scalar TAG]... [--image TAG]...
                  [--histogram TAG]... [--hparams hparams.json] [--text TAG=SUBSTRING]...

`--expect` is a JSON file as written by `cargo run -p quickdraw-data --example write_events`:
  {"file_version": "brain.Event:2",
   "scalars":    {"tag": [[step, value], ...]},
   "images":     {"tag": [{"step": s, "width": w, "height": h}, ...]},
   "histograms": {"tag": [{"step": s, "num": n, "min": a, "max": b, "sum": x, ...}, ...]}}
`--scalar/--image/--histogram TAG` only require the tag to be present (with at least one event).
`--graph a,b,c` requires the run's GraphDef (TensorBoard's Graphs tab) to hold those nodes, each
fed by the one before. `--hparams` checks the HParams plugin's summaries with the plugin's own parsers
(tensorboard.plugins.hparams.metadata): {"hparams": {"name": value}, "metrics": ["group/tag"],
"status": "STATUS_SUCCESS"}. `--text TAG=SUBSTRING` requires a text-plugin summary TAG whose
string contains SUBSTRING.

Prints a JSON summary on stdout; exits 1 on any mismatch, 2 on usage errors.
"""

import argparse
import json
import math
import os
import struct
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorBoard uses TensorFlow when installed

if len(sys.argv) > 1 and sys.argv[1].startswith("s3://"):
    # An s3:// LOGDIR is read in place by TensorBoard's own S3 filesystem (boto3; endpoint from
    # S3_ENDPOINT), the one `pip install tensorboard` uses without TensorFlow: TensorFlow 2.21
    # itself has no s3:// filesystem (it moved to tensorflow-io). This marker module makes
    # TensorBoard use its stub API, as its no_tensorflow build does.
    import types

    sys.modules["tensorboard.compat.notf"] = types.ModuleType("tensorboard.compat.notf")

from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.backend.event_processing import plugin_event_accumulator as pea

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
KINDS = ("scalars", "images", "histograms")


def close(a, b, rel=1e-6, abs_=1e-9):
    return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=abs_)


def png_size(data):
    """(width, height) from the IHDR chunk, or None when `data` is not a PNG."""
    if len(data) < 24 or data[:8] != PNG_MAGIC or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def check_hparams(pacc, active, path, check, summary):
    """The HParams plugin's experiment, session start and end, parsed by the plugin itself."""
    from tensorboard.plugins.hparams import api_pb2, metadata

    with open(path) as f:
        want = json.load(f)
    if not check("hparams" in active, f"the hparams plugin is not active: {sorted(active)}"):
        return
    content = pacc.PluginTagToContent("hparams")
    for tag in (metadata.EXPERIMENT_TAG, metadata.SESSION_START_INFO_TAG,
                metadata.SESSION_END_INFO_TAG):
        check(tag in content, f"hparams tag {tag!r} missing")
    if metadata.EXPERIMENT_TAG in content:
        exp = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
        names = {h.name for h in exp.hparam_infos}
        metrics = {f"{m.name.group}/{m.name.tag}" for m in exp.metric_infos}
        summary["hparams_metrics"] = sorted(metrics)
        for k in want.get("hparams", {}):
            check(k in names, f"experiment: hparam {k!r} not declared ({sorted(names)})")
        for m in want.get("metrics", []):
            check(m in metrics, f"experiment: metric {m!r} not declared ({sorted(metrics)})")
    if metadata.SESSION_START_INFO_TAG in content:
        start = metadata.parse_session_start_info_plugin_data(
            content[metadata.SESSION_START_INFO_TAG])
        got = {}
        for k, v in start.hparams.items():
            got[k] = getattr(v, v.WhichOneof("kind"))
        summary["hparams"] = got
        for k, v in want.get("hparams", {}).items():
            ok = k in got and (close(got[k], v) if isinstance(v, (int, float))
                               and not isinstance(v, bool) else got[k] == v)
            check(ok, f"session start: hparam {k!r} = {got.get(k)!r}, want {v!r}")
    if metadata.SESSION_END_INFO_TAG in content and "status" in want:
        end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
        status = api_pb2.Status.Name(end.status)
        check(status == want["status"], f"session end: status {status}, want {want['status']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logdir")
    ap.add_argument("--expect", help="expected.json with tags and values")
    ap.add_argument("--scalar", action="append", default=[], metavar="TAG")
    ap.add_argument("--image", action="append", default=[], metavar="TAG")
    ap.add_argument("--histogram", action="append", default=[], metavar="TAG")
    ap.add_argument("--hparams", help="hparams.json: hyper-parameters, metrics, status")
    ap.add_argument("--text", action="append", default=[], metavar="TAG=SUBSTRING")
    ap.add_argument("--graph", help="comma-separated node names the run's GraphDef must hold, "
                    "in order")
    args = ap.parse_args()

    expected = {k: {} for k in KINDS}
    file_version = None
    if args.expect:
        with open(args.expect) as f:
            doc = json.load(f)
        for k in KINDS:
            expected[k].update(doc.get(k, {}))
        file_version = doc.get("file_version")
    for kind, tags in (("scalars", args.scalar), ("images", args.image),
                       ("histograms", args.histogram)):
        for t in tags:
            expected[kind].setdefault(t, None)
    if not any(expected.values()) and not (args.hparams or args.text or args.graph):
        ap.error("nothing to check: give --expect or at least one --scalar/--image/--histogram")

    errors = []
    checks = 0

    def check(cond, msg):
        nonlocal checks
        checks += 1
        if not cond:
            errors.append(msg)
        return cond

    guidance = {k: 0 for k in (ea.COMPRESSED_HISTOGRAMS, ea.IMAGES, ea.AUDIO, ea.SCALARS,
                               ea.HISTOGRAMS, ea.TENSORS)}
    acc = ea.EventAccumulator(args.logdir, size_guidance=guidance)
    acc.Reload()
    tags = acc.Tags()
    summary = {"logdir": args.logdir, "file_version": acc.file_version,
               "tags": {k: sorted(tags.get(k, [])) for k in KINDS}, "counts": {}}
    if file_version is not None:
        check(acc.file_version == float(file_version.split(":")[1]),
              f"file_version {acc.file_version} != {file_version}")

    # Legacy reader: scalars, images, histograms as written.
    for tag, want in expected["scalars"].items():
        if not check(tag in tags["scalars"], f"scalar tag {tag!r} missing"):
            continue
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        summary["counts"][tag] = len(got)
        check(len(got) > 0, f"scalar {tag!r}: no events")
        if want is not None:
            check(len(got) == len(want), f"scalar {tag!r}: {len(got)} points, want {len(want)}")
            for (gs, gv), (ws, wv) in zip(got, want):
                check(gs == ws and close(gv, wv),
                      f"scalar {tag!r}: got ({gs}, {gv}), want ({ws}, {wv})")
        check(all(e.wall_time > 1e9 for e in acc.Scalars(tag)), f"scalar {tag!r}: bad wall_time")

    for tag, want in expected["images"].items():
        if not check(tag in tags["images"], f"image tag {tag!r} missing"):
            continue
        got = acc.Images(tag)
        summary["counts"][tag] = len(got)
        check(len(got) > 0, f"image {tag!r}: no events")
        for e in got:
            size = png_size(e.encoded_image_string)
            check(size == (e.width, e.height),
                  f"image {tag!r} step {e.step}: PNG size {size}, proto {e.width}x{e.height}")
        if want is not None:
            check(len(got) == len(want), f"image {tag!r}: {len(got)} images, want {len(want)}")
            for e, w in zip(got, want):
                check((e.step, e.width, e.height) == (w["step"], w["width"], w["height"]),
                      f"image {tag!r}: got step {e.step} {e.width}x{e.height}, want {w}")

    for tag, want in expected["histograms"].items():
        if not check(tag in tags["histograms"], f"histogram tag {tag!r} missing"):
            continue
        got = acc.Histograms(tag)
        summary["counts"][tag] = len(got)
        check(len(got) > 0, f"histogram {tag!r}: no events")
        for e in got:
            h = e.histogram_value
            check(len(h.bucket) == len(h.bucket_limit) and len(h.bucket) > 0,
                  f"histogram {tag!r} step {e.step}: {len(h.bucket)} counts, "
                  f"{len(h.bucket_limit)} limits")
            check(close(sum(h.bucket), h.num), f"histogram {tag!r}: buckets sum to "
                  f"{sum(h.bucket)}, num {h.num}")
            check(all(a < b for a, b in zip(h.bucket_limit, h.bucket_limit[1:])),
                  f"histogram {tag!r}: bucket limits not increasing")
        if want is not None:
            check(len(got) == len(want), f"histogram {tag!r}: {len(got)}, want {len(want)}")
            for e, w in zip(got, want):
                h = e.histogram_value
                check(e.step == w["step"], f"histogram {tag!r}: step {e.step}, want {w['step']}")
                for field in ("num", "min", "max", "sum", "sum_squares"):
                    if field in w:
                        check(close(getattr(h, field), w[field]),
                              f"histogram {tag!r} step {e.step}: {field} "
                              f"{getattr(h, field)}, want {w[field]}")
                if "buckets" in w:
                    check(len(h.bucket) == w["buckets"], f"histogram {tag!r} step {e.step}: "
                          f"{len(h.bucket)} buckets, want {w['buckets']}")
        # The UI's compressed (percentile) view must also be computable.
        check(len(acc.CompressedHistograms(tag)) == len(got),
              f"histogram {tag!r}: compressed view has a different length")

    # Plugin reader (what the TensorBoard UI serves): data_compat migrates every value to a
    # tensor under the scalars / images / histograms plugin.
    pacc = pea.EventAccumulator(args.logdir, size_guidance={pea.TENSORS: 0})
    pacc.Reload()
    plugin_of = {"scalars": "scalars", "images": "images", "histograms": "histograms"}
    active = set(pacc.ActivePlugins())
    plugin_tags = {p: sorted(pacc.PluginTagToContent(p)) if p in active else []
                   for p in plugin_of.values()}
    summary["plugin_tags"] = plugin_tags
    for kind, plugin in plugin_of.items():
        for tag, want in expected[kind].items():
            if not check(tag in plugin_tags[plugin], f"plugin {plugin}: tag {tag!r} missing"):
                continue
            tensors = pacc.Tensors(tag)
            if want is not None:
                check(len(tensors) == len(want),
                      f"plugin {plugin} {tag!r}: {len(tensors)} events, want {len(want)}")
            if kind == "scalars" and want is not None:
                from tensorboard.util import tensor_util
                for e, (ws, wv) in zip(tensors, want):
                    v = tensor_util.make_ndarray(e.tensor_proto).item()
                    check(e.step == ws and close(v, wv),
                          f"plugin scalars {tag!r}: got ({e.step}, {v}), want ({ws}, {wv})")
            if kind == "histograms":
                from tensorboard.util import tensor_util
                for e in tensors:
                    arr = tensor_util.make_ndarray(e.tensor_proto)
                    ok = arr.ndim == 2 and arr.shape[1] == 3 and (arr[:, 0] <= arr[:, 1]).all()
                    check(ok, f"plugin histograms {tag!r} step {e.step}: bad buckets {arr.shape}")

    if args.graph:
        want = args.graph.split(",")
        try:
            graph = acc.Graph()  # TensorBoard's own GraphDef parse
            names = [n.name for n in graph.node]
        except ValueError as e:
            names = []
            check(False, f"no graph: {e}")
        summary["graph"] = names
        check(names == want, f"graph nodes {names}, want {want}")
        if names:
            shapes = {n.name: [d.size for d in n.attr["_output_shapes"].list.shape[0].dim]
                      for n in graph.node}
            summary["graph_shapes"] = shapes
            check(all(n.input == [prev.name] for prev, n in zip(graph.node, graph.node[1:])),
                  "graph: each layer's input is the layer before")
    if args.hparams:
        check_hparams(pacc, active, args.hparams, check, summary)
    for spec in args.text:
        tag, _, want = spec.partition("=")
        from tensorboard.util import tensor_util
        texts = pacc.PluginTagToContent("text") if "text" in active else {}
        if check(tag in texts, f"text tag {tag!r} missing (text tags: {sorted(texts)})"):
            values = [tensor_util.make_ndarray(e.tensor_proto).item() for e in pacc.Tensors(tag)]
            strings = [v.decode() if isinstance(v, bytes) else str(v) for v in values]
            check(any(want in v for v in strings), f"text {tag!r}: no value contains {want!r}")

    summary["checks"] = checks
    summary["errors"] = errors
    summary["ok"] = not errors
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())

"""Checks `quickdraw export` version folders with the reference ONNX tools.

Usage: check_onnx.py CHECK.json [CHECK.json ...]

Each CHECK.json is written by `quickdraw export --write-check FILE`: the export folder, a few
eval examples (the model inputs, named as in signature.json) and the burn model's logits and
probabilities on them. For each one:

- onnx.checker.check_model (full_check: shape inference too) accepts model.onnx; its opset is
  >= 13; the weights are initialisers;
- the graph's inputs and outputs are exactly signature.json's (names, element types, ranks, a
  symbolic batch dimension);
- onnxruntime runs it on the examples: probabilities and logits match burn's to 1e-4, the
  probabilities sum to 1, `classes` is their argmax; one example at a time gives the same rows
  (dynamic batch); for stroke models, extra zero padding changes nothing (dynamic length).

Prints one JSON line per model (differences, onnxruntime latency of one example in ms).
Exit status 0 only when all of that holds.
"""
import json
import os
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort

TOL = 1e-4
ONNX_TYPES = {"DT_FLOAT": onnx.TensorProto.FLOAT, "DT_INT64": onnx.TensorProto.INT64}


def fail(msg):
    print(f"check_onnx: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def tensor(spec):
    return np.asarray(spec["data"], dtype=spec["dtype"]).reshape(spec["shape"])


def check_signature(model, sig, where):
    def io_map(values):
        out = {}
        for v in values:
            tt = v.type.tensor_type
            dims = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in tt.shape.dim]
            out[v.name] = (tt.elem_type, dims)
        return out

    graph_in = io_map(model.graph.input)
    graph_out = io_map(model.graph.output)
    for kind, specs, graph in (("input", sig["inputs"], graph_in), ("output", sig["outputs"], graph_out)):
        names = sorted(s["name"] for s in specs.values())
        if sorted(graph) != names:
            fail(f"{where}: graph {kind}s {sorted(graph)} != signature {names}")
        for key, s in specs.items():
            if key != s["name"]:
                fail(f"{where}: signature key {key} names tensor {s['name']}")
            elem, dims = graph[s["name"]]
            if elem != ONNX_TYPES[s["dtype"]]:
                fail(f"{where}: {kind} {key} has ONNX type {elem}, signature says {s['dtype']}")
            if len(dims) != len(s["shape"]):
                fail(f"{where}: {kind} {key} has rank {len(dims)}, signature says {s['shape']}")
            for d, e in zip(dims, s["shape"]):
                if e == -1 and not isinstance(d, str):
                    fail(f"{where}: {kind} {key} dims {dims}: expected a symbolic dimension for -1 in {s['shape']}")
                if e != -1 and d != e:
                    fail(f"{where}: {kind} {key} dims {dims} != signature {s['shape']}")


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def check(path):
    with open(path) as f:
        c = json.load(f)
    d = c["export_dir"]
    model_path = os.path.join(d, "model.onnx")
    with open(os.path.join(d, "signature.json")) as f:
        sig = json.load(f)

    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:
        fail(f"{model_path}: opset {opset} < 13")
    n_weights = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    if n_weights == 0:
        fail(f"{model_path}: no initialisers (weights must be embedded as initialisers)")
    check_signature(model, sig, model_path)

    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    feeds = {name: tensor(spec) for name, spec in c["inputs"].items()}
    want_p = tensor(c["probabilities"])
    want_l = tensor(c["logits"])
    names = ["logits", "probabilities", "classes"]
    logits, probs, classes = sess.run(names, feeds)
    n, classes_n = want_p.shape
    if probs.shape != (n, classes_n) or logits.shape != (n, classes_n) or classes.shape != (n,):
        fail(f"{model_path}: output shapes {logits.shape} {probs.shape} {classes.shape}, expected ({n}, {classes_n})")
    if classes.dtype != np.int64 or probs.dtype != np.float32:
        fail(f"{model_path}: output dtypes {probs.dtype} {classes.dtype}")
    dp = float(np.abs(probs - want_p).max())
    dl = float(np.abs(logits - want_l).max())
    if dp > TOL:
        fail(f"{model_path}: onnxruntime probabilities differ from burn's by {dp:.3g} > {TOL}")
    if dl > TOL * max(1.0, float(np.abs(want_l).max())):
        fail(f"{model_path}: onnxruntime logits differ from burn's by {dl:.3g}")
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-5):
        fail(f"{model_path}: probabilities do not sum to 1: {probs.sum(axis=1)}")
    if not np.allclose(probs, softmax(logits), atol=1e-6):
        fail(f"{model_path}: probabilities are not softmax(logits)")
    if not (classes == probs.argmax(axis=1)).all():
        fail(f"{model_path}: classes {classes} != argmax {probs.argmax(axis=1)}")

    # Dynamic batch: one example at a time gives the same rows.
    one = {}
    for i in range(n):
        row = {}
        for name, x in feeds.items():
            x = x[i : i + 1]
            if name == "strokes":
                x = x[:, : max(1, int(feeds["lengths"][i]))]
            row[name] = x
        p1 = sess.run(["probabilities"], row)[0]
        if np.abs(p1[0] - probs[i]).max() > TOL:
            fail(f"{model_path}: example {i} alone gives different probabilities (dynamic batch/length broken)")
        one = row
    # Dynamic length: extra zero padding changes nothing.
    if "strokes" in feeds:
        s = feeds["strokes"]
        padded = dict(feeds, strokes=np.concatenate([s, np.zeros((s.shape[0], 5, 3), np.float32)], axis=1))
        pp = sess.run(["probabilities"], padded)[0]
        if np.abs(pp - probs).max() > TOL:
            fail(f"{model_path}: extra padding changes the probabilities")

    # Latency of one example (median of a few runs after a warm-up).
    sess.run(["probabilities"], one)
    times = []
    for _ in range(20):
        t = time.perf_counter()
        sess.run(["probabilities"], one)
        times.append((time.perf_counter() - t) * 1e3)
    print(json.dumps({
        "export_dir": d,
        "model": c.get("model"),
        "opset": opset,
        "examples": n,
        "max_probability_diff": dp,
        "max_logit_diff": dl,
        "onnxruntime_ms": float(np.median(times)),
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
    }))


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    for p in sys.argv[1:]:
        check(p)
    print(f"check_onnx: OK ({len(sys.argv) - 1} models)", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Reads a `quickdraw convert` output directory with TensorFlow's own TFRecord reader and
tf.train.Example parser, and prints one JSON line per example for the Rust test to compare.

Usage: check_shards.py SHARD_DIR OUT.jsonl

- Every shard listed in manifest.json is read with tf.data.TFRecordDataset (which verifies the
  masked CRC32C of every length and payload) and parsed with tf.io.parse_single_example against a
  FixedLen/VarLen spec built from the manifest (img_<size> as int64 list, raw bytes via
  tf.io.decode_raw, or PNG via tf.io.decode_png).
- Per-shard example counts must equal the manifest's.
- A copy of the first shard with one flipped payload byte must make TensorFlow raise
  DataLossError, proving the CRCs are really checked.
Exit status 0 only when all of that holds.
"""
import hashlib
import json
import os
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402


def spec_for(manifest):
    feats = manifest["features"]
    size = feats["raster"]["size"]
    enc = feats["image_encoding"]
    key = f"img_{size}"
    spec = {
        "label": tf.io.FixedLenFeature([], tf.int64),
        "key_id": tf.io.FixedLenFeature([], tf.int64),
        "word": tf.io.FixedLenFeature([], tf.string),
        "countrycode": tf.io.FixedLenFeature([], tf.string),
        "recognized": tf.io.FixedLenFeature([], tf.int64),
        "timestamp": tf.io.FixedLenFeature([], tf.int64),
    }
    if enc == "int64":
        spec[key] = tf.io.FixedLenFeature([size * size], tf.int64)
    else:
        spec[key] = tf.io.FixedLenFeature([], tf.string)
    if feats.get("strokes"):
        for k in ("stroke_x", "stroke_y", "stroke_z"):
            spec[k] = tf.io.VarLenFeature(tf.float32)
        spec["stroke_len"] = tf.io.FixedLenFeature([], tf.int64)
    return spec, key, enc, size


def image_bytes(parsed, key, enc, size):
    v = parsed[key]
    if enc == "int64":
        img = tf.cast(v, tf.uint8)
    elif enc == "bytes":
        img = tf.io.decode_raw(v, tf.uint8)
    else:
        img = tf.reshape(tf.io.decode_png(v, channels=1), [-1])
    arr = img.numpy()
    assert arr.shape == (size * size,), f"{key} has shape {arr.shape}"
    return arr.tobytes()


def main():
    shard_dir, out_path = sys.argv[1], sys.argv[2]
    manifest = json.load(open(os.path.join(shard_dir, "manifest.json")))
    labels = [l.rstrip("\n") for l in open(os.path.join(shard_dir, "labels.txt"))]
    assert labels == manifest["classes"], "labels.txt differs from manifest classes"
    spec, key, enc, size = spec_for(manifest)
    n = 0
    with open(out_path, "w") as out:
        for split, shards in manifest["shards"].items():
            for sh in shards:
                path = os.path.join(shard_dir, sh["file"])
                count = 0
                for rec in tf.data.TFRecordDataset(path):
                    p = tf.io.parse_single_example(rec, spec)
                    img = image_bytes(p, key, enc, size)
                    label = int(p["label"])
                    word = p["word"].numpy().decode()
                    assert 0 <= label < len(labels), f"label {label} out of range"
                    assert labels[label] == word, f"label {label} is {labels[label]!r}, word {word!r}"
                    row = {
                        "split": split,
                        "shard": sh["file"],
                        "key_id": str(int(p["key_id"]) & 0xFFFFFFFFFFFFFFFF),
                        "label": label,
                        "word": word,
                        "countrycode": p["countrycode"].numpy().decode(),
                        "recognized": int(p["recognized"]),
                        "timestamp": int(p["timestamp"]),
                        "image_sha256": hashlib.sha256(img).hexdigest(),
                        "ink_pixels": sum(1 for b in img if b > 0),
                    }
                    if "stroke_len" in p:
                        sl = int(p["stroke_len"])
                        for k in ("stroke_x", "stroke_y", "stroke_z"):
                            vals = tf.sparse.to_dense(p[k]).numpy()
                            assert len(vals) == sl, f"{k} has {len(vals)} values, stroke_len {sl}"
                        row["stroke_len"] = sl
                        row["stroke_z_sum"] = float(tf.reduce_sum(tf.sparse.to_dense(p["stroke_z"])))
                    out.write(json.dumps(row) + "\n")
                    count += 1
                assert count == sh["examples"], f"{path}: {count} examples, manifest says {sh['examples']}"
                n += count

    # Corrupt one payload byte of a copy of the first non-empty shard: TensorFlow must refuse it.
    first = next((s for v in manifest["shards"].values() for s in v if s["examples"] > 0), None)
    if first is not None:
        with tempfile.TemporaryDirectory() as tmp:
            bad = os.path.join(tmp, "bad")
            shutil.copy(os.path.join(shard_dir, first["file"]), bad)
            with open(bad, "r+b") as f:
                f.seek(12 + 5)  # inside the first record's payload
                b = f.read(1)
                f.seek(12 + 5)
                f.write(bytes([b[0] ^ 0x40]))
            try:
                for _ in tf.data.TFRecordDataset(bad):
                    pass
                raise SystemExit("TensorFlow read a corrupted shard without error: CRCs not checked?")
            except tf.errors.DataLossError as e:
                print(f"corruption detected by TensorFlow as expected: {str(e).splitlines()[0][:120]}", file=sys.stderr)
    print(json.dumps({"examples": n, "tensorflow": tf.__version__}))


if __name__ == "__main__":
    main()

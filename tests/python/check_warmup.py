"""Reads `quickdraw export`'s warm-up files with TensorFlow Serving's own readers.

Usage: check_warmup.py CHECK.json [CHECK.json ...]

Each CHECK.json is written by `quickdraw export --write-check FILE` (the export folder and its
check sample's model inputs). Its `assets.extra/tf_serving_warmup_requests` must be what
tensorflow_model_server reads at load time: a TFRecord file (tf.data's reader checks the CRCs)
of `tensorflow.serving.PredictionLog`s (the PyPI tensorflow-serving-api's prediction_log_pb2),
each a predict_log whose request's inputs are the signature's, as TensorProtos tf.make_ndarray
reads. The first record is the whole check sample, the second its first example.

Prints one JSON line per export; exit status 0 only when all of that holds.
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import prediction_log_pb2  # noqa: E402


def fail(msg):
    print(f"check_warmup: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(path):
    c = json.load(open(path))
    d = c["export_dir"]
    f = os.path.join(d, "assets.extra", "tf_serving_warmup_requests")
    records = [r.numpy() for r in tf.data.TFRecordDataset(f)]
    if len(records) != 2:
        fail(f"{f}: {len(records)} records, expected 2")
    sig = json.load(open(os.path.join(d, "signature.json")))
    for i, raw in enumerate(records):
        log = prediction_log_pb2.PredictionLog.FromString(raw)
        if log.WhichOneof("log_type") != "predict_log":
            fail(f"{f} record {i}: {log.WhichOneof('log_type')}, expected predict_log")
        inputs = log.predict_log.request.inputs
        if sorted(inputs.keys()) != sorted(sig["inputs"].keys()):
            fail(f"{f} record {i}: inputs {sorted(inputs.keys())} != signature {sorted(sig['inputs'])}")
        for key, spec in c["inputs"].items():
            want = np.asarray(spec["data"], dtype=spec["dtype"]).reshape(spec["shape"])
            if i == 1:
                want = want[:1]
            got = tf.make_ndarray(inputs[key])
            if got.dtype != want.dtype or got.shape != want.shape or not np.array_equal(got, want):
                fail(f"{f} record {i} input {key}: {got.dtype}{got.shape} != check sample {want.dtype}{want.shape}")
    print(json.dumps({"export_dir": d, "warmup_records": len(records)}))


def main():
    if len(sys.argv) < 2:
        fail("usage: check_warmup.py CHECK.json [CHECK.json ...]")
    for p in sys.argv[1:]:
        check(p)


if __name__ == "__main__":
    main()

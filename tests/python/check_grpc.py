"""Drives `quickdraw serve`'s gRPC API with TensorFlow Serving's own Python client.

The stubs are PyPI's `tensorflow-serving-api` (prediction_service_pb2_grpc, model_service_pb2_grpc)
and the tensors are `tf.make_tensor_proto`'s, exactly what an existing TF Serving client sends. The
same inputs go to the REST API; the script prints one JSON object with what it saw, and the Rust
test (crates/quickdraw/tests/grpc.rs) checks it, so a failure names the field.

usage: check_grpc.py GRPC_ADDR REST_URL MODEL SIZE INPUTS.json
INPUTS.json: {"drawings": [<drawing objects>], "examples_b64": [<serialized tf.Example, base64>]}
"""
import base64
import json
import os
import sys
import urllib.error
import urllib.request

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)


def rest(url, body):
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def code_of(call):
    try:
        call()
        return "OK"
    except grpc.RpcError as e:
        return e.code().name + ": " + e.details()


def main():
    addr, rest_url, model, size, inputs = sys.argv[1:6]
    size = int(size)
    inputs = json.load(open(inputs))
    channel = grpc.insecure_channel(addr)
    predict = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    out = {}

    # GetModelMetadata: the signature, packed in an Any as SignatureDefMap.
    req = get_model_metadata_pb2.GetModelMetadataRequest()
    req.model_spec.name = model
    req.metadata_field.append("signature_def")
    meta = predict.GetModelMetadata(req, timeout=30)
    sigs = get_model_metadata_pb2.SignatureDefMap()
    meta.metadata["signature_def"].Unpack(sigs)
    sig = sigs.signature_def["serving_default"]
    out["metadata"] = {
        "version": meta.model_spec.version.value,
        "method_name": sig.method_name,
        "inputs": {
            k: {"dtype": tf.dtypes.as_dtype(v.dtype).name, "shape": [d.size for d in v.tensor_shape.dim]}
            for k, v in sig.inputs.items()
        },
        "outputs": sorted(sig.outputs.keys()),
    }

    # ModelService.GetModelStatus.
    sreq = get_model_status_pb2.GetModelStatusRequest()
    sreq.model_spec.name = model
    st = models.GetModelStatus(sreq, timeout=30)
    out["status"] = [
        {"version": s.version, "state": get_model_status_pb2.ModelVersionStatus.State.Name(s.state),
         "error_code": s.status.error_code}
        for s in st.model_version_status
    ]

    # Predict on image tensors (tf.make_tensor_proto writes tensor_content), against REST.
    key = f"img_{size}"
    rng = np.random.default_rng(7)
    images = rng.random((3, 1, size, size), dtype=np.float32)
    preq = predict_pb2.PredictRequest()
    preq.model_spec.name = model
    preq.model_spec.signature_name = "serving_default"
    preq.inputs[key].CopyFrom(tf.make_tensor_proto(images))
    pres = predict.Predict(preq, timeout=30)
    g_probs = tf.make_ndarray(pres.outputs["probabilities"])
    g_classes = tf.make_ndarray(pres.outputs["classes"])
    g_names = [b.decode() for b in tf.make_ndarray(pres.outputs["class_name"]).tolist()]
    r = rest(f"{rest_url}/v1/models/{model}:predict", {"instances": images.tolist()})["predictions"]
    out["predict_image"] = {
        "shape": list(g_probs.shape),
        "outputs": sorted(pres.outputs.keys()),
        "max_diff_vs_rest": max_diff(g_probs, [p["probabilities"] for p in r]),
        "logits_max_diff_vs_rest": max_diff(tf.make_ndarray(pres.outputs["logits"]), [p["logits"] for p in r]),
        "classes_equal": g_classes.tolist() == [p["classes"] for p in r],
        "names_equal": g_names == [p["class_name"] for p in r],
        "version": pres.model_spec.version.value,
    }
    # The same images as float_val (tensor_content empty) and as [N, S*S].
    flat = tf.make_tensor_proto(images.reshape(3, size * size))
    vals = tf.make_ndarray(flat).ravel().tolist()
    freq = predict_pb2.PredictRequest()
    freq.model_spec.name = model
    t = freq.inputs[key]
    t.dtype = tf.float32.as_datatype_enum
    t.tensor_shape.CopyFrom(tf.TensorShape([3, size * size]).as_proto())
    t.float_val.extend(vals)
    freq.output_filter.append("probabilities")
    fres = predict.Predict(freq, timeout=30)
    out["predict_float_val"] = {
        "outputs": sorted(fres.outputs.keys()),
        "max_diff_vs_tensor_content": max_diff(tf.make_ndarray(fres.outputs["probabilities"]), g_probs),
    }

    # Predict on drawings: a DT_STRING tensor of QuickDraw NDJSON lines.
    lines = [json.dumps(d) for d in inputs["drawings"]]
    dreq = predict_pb2.PredictRequest()
    dreq.model_spec.name = model
    dreq.inputs["drawing"].CopyFrom(tf.make_tensor_proto(lines, dtype=tf.string))
    dres = predict.Predict(dreq, timeout=30)
    r = rest(f"{rest_url}/v1/models/{model}:predict", {"instances": inputs["drawings"]})["predictions"]
    out["predict_drawing"] = {
        "max_diff_vs_rest": max_diff(tf.make_ndarray(dres.outputs["probabilities"]), [p["probabilities"] for p in r]),
        "class_name": [b.decode() for b in tf.make_ndarray(dres.outputs["class_name"]).tolist()],
    }

    # Classify on tf.train.Examples, against REST's :classify.
    creq = classification_pb2.ClassificationRequest()
    creq.model_spec.name = model
    for b in inputs["examples_b64"]:
        creq.input.example_list.examples.append(tf.train.Example.FromString(base64.b64decode(b)))
    cres = predict.Classify(creq, timeout=30)
    r = rest(f"{rest_url}/v1/models/{model}:classify",
             {"examples": [{"b64": b} for b in inputs["examples_b64"]]})["result"]
    g = [[(c.label, c.score) for c in cl.classes] for cl in cres.result.classifications]
    out["classify"] = {
        "n": len(g),
        "labels_equal": [[l for l, _ in row] for row in g] == [[l for l, _ in row] for row in r],
        "max_diff_vs_rest": max_diff([[s for _, s in row] for row in g], [[s for _, s in row] for row in r]),
        "top": [row[0][0] for row in g],
    }
    # Examples through Predict (the `examples` input) answer the same.
    ereq = predict_pb2.PredictRequest()
    ereq.model_spec.name = model
    ereq.inputs["examples"].CopyFrom(
        tf.make_tensor_proto([base64.b64decode(b) for b in inputs["examples_b64"]], dtype=tf.string))
    eres = predict.Predict(ereq, timeout=30)
    out["predict_examples_top"] = [b.decode() for b in tf.make_ndarray(eres.outputs["class_name"]).tolist()]

    # Errors, as status codes.
    def predict_with(mutate):
        q = predict_pb2.PredictRequest()
        q.model_spec.name = model
        q.inputs[key].CopyFrom(tf.make_tensor_proto(images))
        mutate(q)
        return lambda: predict.Predict(q, timeout=30)

    def bad_drawing(q):
        del q.inputs[key]
        q.inputs["drawing"].CopyFrom(tf.make_tensor_proto(['{"drawing": 5}']))

    out["errors"] = {
        "unknown_model": code_of(predict_with(lambda q: setattr(q.model_spec, "name", "nope"))),
        "unknown_version": code_of(predict_with(lambda q: q.model_spec.version.__setattr__("value", 99))),
        "wrong_dtype": code_of(predict_with(
            lambda q: q.inputs[key].CopyFrom(tf.make_tensor_proto(images.astype(np.float64))))),
        "unknown_input": code_of(predict_with(
            lambda q: q.inputs["pixels"].CopyFrom(tf.make_tensor_proto(images)))),
        "out_of_range_pixels": code_of(predict_with(
            lambda q: q.inputs[key].CopyFrom(tf.make_tensor_proto(images * 300)))),
        "too_many_instances": code_of(predict_with(
            lambda q: q.inputs[key].CopyFrom(tf.make_tensor_proto(np.zeros((65, 1, size, size), np.float32))))),
        "bad_drawing": code_of(predict_with(bad_drawing)),
        "no_metadata_field": code_of(lambda: predict.GetModelMetadata(
            get_model_metadata_pb2.GetModelMetadataRequest(model_spec={"name": model}), timeout=30)),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()

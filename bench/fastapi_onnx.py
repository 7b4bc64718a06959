"""What a Python user would deploy instead of `quickdraw serve` (bench only, not shipped):
the same exported model.onnx behind FastAPI + uvicorn + onnxruntime, answering TF Serving's REST
`:predict` for model-input images, as bench/serve_load.sh's SERVER=fastapi runs it.

usage: fastapi_onnx.py VERSION_DIR PORT      (needs `pip install fastapi uvicorn` in .venv)

It does what `quickdraw serve` does for an image instance and no more: parse the JSON, check the
shape, run the graph, answer probabilities, logits, classes and class names. (No drawing
preprocessing: a Python deployment would need its own rasteriser for that; the comparison uses
images.) One uvicorn worker per core, as a Python deployment on this machine would run.
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response

VERSION_DIR = os.environ.get("QD_VERSION_DIR") or (sys.argv[1] if len(sys.argv) > 1 else "")
sig = json.load(open(os.path.join(VERSION_DIR, "signature.json")))
(key,) = sig["inputs"].keys()
size = sig["inputs"][key]["shape"][-1]
labels = open(os.path.join(VERSION_DIR, "assets", "labels.txt")).read().split("\n")
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
session = ort.InferenceSession(os.path.join(VERSION_DIR, "model.onnx"), opts, providers=["CPUExecutionProvider"])
outputs = [o.name for o in session.get_outputs()]
app = FastAPI()


@app.get("/healthz")
def healthz():
    return {"status": "ok"}


@app.post("/v1/models/{spec}")
async def predict(spec: str, request: Request):
    if not spec.endswith(":predict"):
        raise HTTPException(404, "only :predict")
    body = json.loads(await request.body())
    x = np.asarray(body["instances"], dtype=np.float32)
    if x.shape[1:] not in ((1, size, size), (size, size)):
        raise HTTPException(400, f"instances of shape {x.shape[1:]}")
    x = x.reshape(-1, 1, size, size)
    res = dict(zip(outputs, session.run(outputs, {key: x})))
    preds = [
        {
            "classes": int(res["classes"][i]),
            "probabilities": res["probabilities"][i].tolist(),
            "logits": res["logits"][i].tolist(),
            "class_name": labels[int(res["classes"][i])],
        }
        for i in range(x.shape[0])
    ]
    return Response(json.dumps({"predictions": preds}), media_type="application/json")


if __name__ == "__main__":
    os.environ["QD_VERSION_DIR"] = sys.argv[1]
    uvicorn.run("fastapi_onnx:app", host="127.0.0.1", port=int(sys.argv[2]), workers=os.cpu_count(),
                log_level="warning", app_dir=os.path.dirname(os.path.abspath(__file__)))

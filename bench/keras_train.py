"""The same model, data and batch size as `quickdraw train`, trained by TensorFlow/Keras.

`quickdraw bench train` runs this script next to its own training run so the two throughputs come
from one benchmark run on one machine. It can also be run by hand:

    .venv/bin/python bench/keras_train.py --config MODEL_DIR/config.json \
        --train-files 'SHARDS/train-*' --steps 30 --warmup 5 --batch-size 64

With `--eval-files 'SHARDS/eval-*'` it also reports the eval accuracy, top-3 accuracy and MAP@3
after training (the accuracy side of the recipe comparison in docs/benchmarks.md); the warm-up
steps then count as training steps too (`--steps` is the total).

The model is rebuilt from the `config.json` that `quickdraw train` wrote (so both sides train the
same architecture: the lecture CNN is conv 10x10x32 'same' + ReLU + max-pool 4, conv 5x5x64 +
ReLU + max-pool 4, dense 256 + ReLU, dropout 0.4, dense n_classes; the DNN is dense layers + ReLU),
with Adam at the same learning rate. Input is the same TFRecord shards, read by tf.data
(TFRecordDataset -> parse_example -> /255 -> shuffle -> batch -> prefetch), so both sides pay for
their input pipelines. Prints one JSON object on the last line.

Verification/benchmark only: the quickdraw binary never runs Python.
"""

import argparse
import glob
import json
import os
import resource
import sys
import time


def build_model(cfg, tf):
    size = cfg["image_size"]
    n = cfg["n_classes"]
    kind = cfg["kind"]
    layers = tf.keras.layers
    inp = tf.keras.Input(shape=(size, size, 1), name="image")
    x = inp
    if kind == "cnn":
        for c in cfg["conv"]:
            x = layers.Conv2D(c["filters"], c["kernel"], padding="same", activation="relu")(x)
            x = layers.MaxPooling2D(c["pool"], padding="same")(x)
        x = layers.Flatten()(x)
        x = layers.Dense(cfg["dense"], activation="relu")(x)
        x = layers.Dropout(cfg.get("dropout") or 0.0)(x)
    elif kind == "dnn":
        x = layers.Flatten()(x)
        for h in cfg["hidden"]:
            x = layers.Dense(h, activation="relu")(x)
        x = layers.Dropout(cfg.get("dropout") or 0.0)(x)
    elif kind == "linear":
        x = layers.Flatten()(x)
    else:
        sys.exit(f"keras_train.py: model kind {kind!r} is not benchmarked (cnn, dnn, linear)")
    out = layers.Dense(n, name="logits")(x)
    return tf.keras.Model(inp, out)


def dataset(files, size, batch, tf, seed):
    key = f"img_{size}"
    spec = {key: tf.io.FixedLenFeature([size * size], tf.int64), "label": tf.io.FixedLenFeature([1], tf.int64)}

    def parse(records):
        p = tf.io.parse_example(records, spec)
        img = tf.reshape(tf.cast(p[key], tf.float32) / 255.0, [-1, size, size, 1])
        return img, tf.reshape(p["label"], [-1])

    ds = tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE)
    ds = ds.shuffle(10_000, seed=seed).repeat().batch(batch, drop_remainder=True)
    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="config.json written by quickdraw train")
    ap.add_argument("--train-files", required=True, help="shard glob, e.g. 'data/train-*'")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--learning-rate", type=float, default=1e-3, help="when config.json has none")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--infer-iters", type=int, default=50, help="batch-1 inference timings")
    ap.add_argument("--eval-files", help="eval shard glob: report accuracy after training")
    a = ap.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    tf.keras.utils.set_random_seed(a.seed)
    with open(a.config) as f:
        full = json.load(f)
    # config.json holds the architecture under "model", beside the optimiser settings.
    cfg = full["model"]
    lr = full.get("learning_rate") or a.learning_rate
    files = sorted(glob.glob(a.train_files))
    if not files:
        sys.exit(f"keras_train.py: no files match {a.train_files!r}")
    model = build_model(cfg, tf)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(lr),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    ds = dataset(files, cfg["image_size"], a.batch_size, tf, a.seed)
    it = ds  # infinite (repeat); each fit takes steps_per_epoch batches
    # The first fit traces and compiles the training function; the timed one reuses it.
    warmup = max(a.warmup, 1)
    model.fit(it, steps_per_epoch=warmup, epochs=1, verbose=0)
    t = time.perf_counter()
    # With --eval-files the budget is --steps in all (the same examples seen as quickdraw's run).
    steps = a.steps - warmup if a.eval_files else a.steps
    hist = model.fit(it, steps_per_epoch=steps, epochs=1, verbose=0)
    secs = time.perf_counter() - t
    evaluation = {}
    if a.eval_files:
        efiles = sorted(glob.glob(a.eval_files))
        if not efiles:
            sys.exit(f"keras_train.py: no files match {a.eval_files!r}")
        key = f"img_{cfg['image_size']}"
        spec = {key: tf.io.FixedLenFeature([cfg["image_size"] ** 2], tf.int64),
                "label": tf.io.FixedLenFeature([1], tf.int64)}
        xs, ys = [], []
        for rec in tf.data.TFRecordDataset(efiles).batch(1024):
            p = tf.io.parse_example(rec, spec)
            size = cfg["image_size"]
            xs.append(tf.reshape(tf.cast(p[key], tf.float32) / 255.0, [-1, size, size, 1]))
            ys.append(tf.reshape(p["label"], [-1]))
        x, y = tf.concat(xs, 0), tf.concat(ys, 0).numpy()
        logits = model.predict(x, batch_size=256, verbose=0)
        top = np.argsort(-logits, axis=1)[:, :3]
        hit = top == y[:, None]
        evaluation = {
            "eval_examples": int(len(y)),
            "eval_accuracy": float(hit[:, 0].mean()),
            "eval_top3_accuracy": float(hit.any(axis=1).mean()),
            "eval_map3": float((hit / np.array([1.0, 2.0, 3.0])).sum(axis=1).mean()),
        }

    # Inference: a batch (images/s) and one image (latency), compiled call, no input pipeline.
    size = cfg["image_size"]
    xb = tf.constant(np.random.default_rng(0).random((a.batch_size, size, size, 1), dtype=np.float32))
    x1 = xb[:1]
    infer = tf.function(lambda x: tf.nn.softmax(model(x, training=False)))
    infer(xb), infer(x1)
    t0 = time.perf_counter()
    reps = 10
    for _ in range(reps):
        infer(xb).numpy()
    batch_ips = reps * a.batch_size / (time.perf_counter() - t0)
    lat = []
    for _ in range(a.infer_iters):
        t0 = time.perf_counter()
        infer(x1).numpy()
        lat.append(time.perf_counter() - t0)
    lat.sort()

    print(json.dumps({
        "framework": "keras",
        "tensorflow": tf.__version__,
        "model": cfg["kind"],
        "parameters": int(model.count_params()),
        "batch_size": a.batch_size,
        "steps": a.steps,
        "seconds": secs,
        "images_per_sec": a.steps * a.batch_size / secs,
        "final_loss": float(hist.history["loss"][-1]),
        "infer_batch_images_per_sec": batch_ips,
        "infer_single_ms_median": 1e3 * lat[len(lat) // 2],
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        **evaluation,
    }))


if __name__ == "__main__":
    main()

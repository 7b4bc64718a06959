#!/usr/bin/env bash
# The recipe comparison of docs/benchmarks.md ("A better recipe"): the lecture's CNN against
# `--preset quickdraw28` on the real numpy_bitmap data (6 classes x 2,000, 28x28), with the
# ablation in between (architecture, schedule, label smoothing, wider 3x3 blocks, batch norm),
# and TensorFlow/Keras training the lecture CNN on the same split.
# Every run sees the same number of examples (STEPS x 64) from the same shards, seed SEED.
#
#   bench/recipe.sh                 # STEPS=1000 SEED=0 WORK=target/bench-recipe
#
# DATASET=raw64: the same comparison at 64x64 on the real raw NDJSON (the 20 classes with the
# most drawings in ../shared/data/quickdraw/raw, 36-60 each: a small-data regime), the lecture
# CNN against --preset quickdraw64 (with and without augmentation).
# Prints one JSON line per run: name, flags, eval accuracy, top-3, MAP@3, train seconds.
# Needs ../shared/data/quickdraw/numpy_bitmap and, for the Keras row, the .venv of
# scripts/test-all (KERAS=0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-1000}
SEED=${SEED:-0}
WORK=${WORK:-target/bench-recipe}
DATA=../shared/data/quickdraw/numpy_bitmap
[ -d "$DATA" ] || { echo "recipe.sh: $DATA is missing (the shared real data)" >&2; exit 2; }
cargo build --release --locked -q
QD=target/release/quickdraw
if [ ! -f "$WORK/shards/manifest.json" ]; then
  $QD --quiet convert --input "$DATA" --output "$WORK/shards" --size 28 \
    --split train=0.8,eval=0.2 --shards 2
fi
SHARDS="$WORK/shards"
run() { # name, flags...
  local name=$1; shift
  local dir="$WORK/$name-s$SEED"
  rm -rf "$dir"
  local t0; t0=$(date +%s.%N)
  # shellcheck disable=SC2068 # the flags are words
  $QD --quiet train --model cnn --model-dir "$dir" --train-files "$SHARDS/train-*" \
    --train-steps "$STEPS" --batch-size 64 --seed "$SEED" $@
  local t1; t1=$(date +%s.%N)
  $QD --quiet evaluate --model-dir "$dir" --eval-files "$SHARDS/eval-*" --json |
    python3 -c 'import json,sys; e=json.load(sys.stdin); print(json.dumps({"run": sys.argv[1], "seed": int(sys.argv[2]), "flags": sys.argv[3], "eval_accuracy": round(e["accuracy"], 4), "top3": round(e["top3_accuracy"], 4), "map3": round(e["map3"], 4), "examples": e["examples"], "train_seconds": round(float(sys.argv[4]), 1)}))' \
      "$name" "$SEED" "$*" "$(python3 -c "print($t1 - $t0)")"
}
if [ "${DATASET:-npy28}" = raw64 ]; then
  RAW=../shared/data/quickdraw/raw
  if [ ! -f "$WORK/raw64/manifest.json" ]; then
    for f in "$RAW"/*.ndjson; do echo "$(wc -l <"$f") $(basename "$f" .ndjson)"; done |
      sort -k1,1nr -k2 | head -20 | cut -d' ' -f2- >"$WORK/raw64-classes.txt"
    $QD --quiet convert --input "$RAW" --output "$WORK/raw64" --size 64 \
      --classes "@$WORK/raw64-classes.txt" --include-unrecognized --split train=0.8,eval=0.2 --shards 1
  fi
  SHARDS="$WORK/raw64"
  run lecture64
  run preset64 --preset quickdraw64
  run preset64-no-augment --preset quickdraw64 --augment none
  exit 0
fi
LECTURE=""
ARCH="--conv 5:2:32,5:2:64"
SCHED="$ARCH --learning-rate 2e-3 --lr-schedule cosine --warmup-steps 100"
SMOOTH="$SCHED --label-smoothing 0.1"
run lecture $LECTURE
run arch $ARCH
run arch+cosine $SCHED
run arch+cosine+smoothing $SMOOTH
run wider-3x3 --preset quickdraw28 --batch-norm false
run preset --preset quickdraw28
run preset+augment --preset quickdraw28 --augment light
run lecture+augment --augment light
if [ "${KERAS:-1}" != 0 ]; then
  .venv/bin/python bench/keras_train.py --config "$WORK/lecture-s$SEED/config.json" \
    --train-files "$WORK/shards/train-*" --eval-files "$WORK/shards/eval-*" \
    --steps "$STEPS" --warmup 5 --batch-size 64 --seed "$SEED" --infer-iters 1 |
    tail -1 | python3 -c 'import json,sys; k=json.loads(sys.stdin.read()); print(json.dumps({"run": "keras-lecture", "seed": int(sys.argv[1]), "eval_accuracy": round(k["eval_accuracy"], 4), "top3": round(k["eval_top3_accuracy"], 4), "map3": round(k["eval_map3"], 4), "examples": k["eval_examples"], "train_seconds": round(k["seconds"], 1)}))' "$SEED"
fi

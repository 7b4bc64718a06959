#!/usr/bin/env bash
# Wide & deep against the CNN alone (docs/benchmarks.md "Wide & deep"), on the real raw NDJSON
# of ../shared/data/quickdraw/raw (122 classes, 36-60 drawings each, with country codes,
# `recognized` and per-point timestamps, so every metadata column of the wide part is present).
# Both models use the same CNN (--preset quickdraw28 at 28x28), the same shards, the same
# number of examples (STEPS x 64) and the same seeds; `compare` measures the delta per seed.
#
#   bench/wide_deep.sh             # STEPS=1000 SEEDS="0 1 2" WORK=target/bench-wide-deep
#
# Prints one JSON line per run (model, seed, eval accuracy, top-3, MAP@3, train seconds) and
# one per seed with compare's delta and flipped examples.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-1000}
SEEDS=${SEEDS:-0 1 2}
WORK=${WORK:-target/bench-wide-deep}
RAW=../shared/data/quickdraw/raw
[ -d "$RAW" ] || { echo "wide_deep.sh: $RAW is missing (the shared real data)" >&2; exit 2; }
cargo build --release --locked -q
QD=target/release/quickdraw
SHARDS="$WORK/shards"
if [ ! -f "$SHARDS/manifest.json" ]; then
  $QD --quiet convert --input "$RAW" --output "$SHARDS" --size 28 --include-unrecognized \
    --split train=0.8,eval=0.2 --shards 2
fi
for seed in $SEEDS; do
  for model in cnn wide_deep; do
    dir="$WORK/$model-s$seed"
    rm -rf "$dir"
    t0=$(date +%s.%N)
    $QD --quiet train --model "$model" --preset quickdraw28 --model-dir "$dir" \
      --train-files "$SHARDS/train-*" --train-steps "$STEPS" --batch-size 64 --seed "$seed"
    t1=$(date +%s.%N)
    $QD --quiet evaluate --model-dir "$dir" --eval-files "$SHARDS/eval-*" --json |
      python3 -c 'import json,sys; e=json.load(sys.stdin); print(json.dumps({"model": sys.argv[1], "seed": int(sys.argv[2]), "eval_accuracy": round(e["accuracy"], 4), "top3": round(e["top3_accuracy"], 4), "map3": round(e["map3"], 4), "examples": e["examples"], "train_seconds": round(float(sys.argv[3]), 1)}))' \
        "$model" "$seed" "$(python3 -c "print($t1 - $t0)")"
  done
  $QD --quiet compare "$WORK/cnn-s$seed" "$WORK/wide_deep-s$seed" --eval-files "$SHARDS/eval-*" --json |
    python3 -c 'import json,sys; c=json.load(sys.stdin); print(json.dumps({"compare": "wide_deep - cnn", "seed": int(sys.argv[1]), "delta_accuracy": round(c["delta_accuracy"], 4), "fixed": c["fixed"], "broken": c["broken"]}))' "$seed"
done

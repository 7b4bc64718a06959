#!/usr/bin/env bash
# Object-store figures of issue 12: conversion to a local S3-API server against local disk, the
# conversion split over 1, 2 and 4 local workers, and the input pipeline's read rate (model
# removed) from the object store against local disk.
#
#   bench/object_store.sh
#
# Starts moto's S3 server (from the verification venv, scripts/test-all installs it) on
# 127.0.0.1:$PORT (9599), builds the release binary, and runs `quickdraw bench convert` and
# `quickdraw bench read` on the shared real QuickDraw samples. moto is a Python server: its
# throughput bounds the object-store figures (a real S3 or GCS endpoint is faster).
# Environment: PORT, REPEAT (input size as repetitions of the 122,000 samples, 25), WORK
# (target/bench-object-store).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-9599}
REPEAT=${REPEAT:-25}
WORK=${WORK:-target/bench-object-store}
[ -x .venv/bin/moto_server ] || { echo ".venv/bin/moto_server not found: run scripts/test-all" >&2; exit 2; }
cargo build --release --locked -q
QD=$PWD/target/release/quickdraw

.venv/bin/moto_server -H 127.0.0.1 -p "$PORT" >/dev/null 2>&1 &
MOTO=$!
trap 'kill $MOTO 2>/dev/null || true' EXIT
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
.venv/bin/python tests/python/s3.py mkbucket bench

echo "== convert: local disk, 1 process"
$QD bench convert --repeat "$REPEAT" --scratch "$WORK/local"
echo "== convert: s3://bench (moto on 127.0.0.1), 1 process"
$QD bench convert --repeat "$REPEAT" --scratch "$WORK/s3" --output-url s3://bench/convert
for n in 2 4; do
  echo "== convert: local disk, $n worker processes + finalize"
  $QD bench convert --repeat "$REPEAT" --scratch "$WORK/w$n" --workers "$n"
done

echo "== read: 100,000 synthetic drawings as 8 shards (~490 MB), local disk and s3; < 1 epoch read"
rm -rf "$WORK/read-input" "$WORK/read-shards"
$QD --quiet synth --classes 10 --per-class 10000 --output "$WORK/read-input"
$QD --quiet convert --input "$WORK/read-input" --output "$WORK/read-shards" --split train=0.9,eval=0.1 --shards 8
$QD --quiet convert --input "$WORK/read-input" --output s3://bench/read-shards --split train=0.9,eval=0.1 --shards 8
$QD bench read --files "$WORK/read-shards" --batches 1300
$QD bench read --files s3://bench/read-shards --batches 1300

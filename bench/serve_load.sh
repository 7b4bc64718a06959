#!/usr/bin/env bash
# Load test of `quickdraw serve` with wrk (Debian package `wrk`), loopback only, bounded in time.
#
#   bench/serve_load.sh [CONNECTIONS...]        (default: 1 8 32)
#
# Builds the release binary, makes a real 64x64 lecture-CNN export (synthetic data -> convert ->
# train 20 steps -> export --force: the weights' quality does not change the cost of a request),
# serves it on 127.0.0.1, then runs wrk for DURATION seconds (default 20) at each connection count
# with bench/wrk_predict.lua (one drawing per :predict request). Prints one JSON line per run and
# the server's own counters (/healthz: requests, inference calls, rows per call, refusals).
# Environment: DURATION, THREADS (wrk threads, 1),
# PORT (8599), GRPC_PORT (8598), WORK (target/bench-serve), SERVE_ARGS (extra `serve` flags, e.g.
# "--runtime onnxruntime --onnxruntime-lib /path/to/libonnxruntime.so --enable-batching").
# CLIENT=quickdraw: load REST and gRPC side by side with `quickdraw bench serve` (the same
#   closed-loop client for both) instead of wrk; INPUT=drawing|image (what each request carries).
# METRICS=off: serve with a --monitoring_config_file that turns Prometheus metrics off.
# SERVER=fastapi (with CLIENT=quickdraw, INPUT=image): instead of `quickdraw serve`, the same
#   model.onnx behind FastAPI/uvicorn + onnxruntime (bench/fastapi_onnx.py, what a Python user
#   would deploy), REST only; needs `pip install fastapi uvicorn` in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 2; }
DURATION=${DURATION:-20}
THREADS=${THREADS:-1}
PORT=${PORT:-8599}
WORK=${WORK:-target/bench-serve}
CONNS=("$@")
[ ${#CONNS[@]} -gt 0 ] || CONNS=(1 8 32)

cargo build --release --locked -q
QD=target/release/quickdraw
if [ ! -f "$WORK/export/1/model.onnx" ]; then
  rm -rf "$WORK"
  $QD --quiet synth --classes 10 --per-class 300 --out "$WORK/synth"
  $QD --quiet convert --input "$WORK/synth" --output "$WORK/shards" --split train=0.9,eval=0.1 --size 64
  $QD --quiet train --model cnn --model-dir "$WORK/cnn" --train-files "$WORK/shards/train-*" \
    --eval-files "$WORK/shards/eval-*" --train-steps 20
  $QD --quiet export --model-dir "$WORK/cnn" --export-dir "$WORK/export" --force
fi
$QD model show --dir "$WORK/export/1" | head -20

CLIENT=${CLIENT:-wrk}
GRPC_PORT=${GRPC_PORT:-8598}
INPUT=${INPUT:-drawing}
MONITORING=()
if [ "${METRICS:-on}" = off ]; then
  echo 'prometheus_config { enable: false }' >"$WORK/monitoring.config"
  MONITORING=(--monitoring_config_file "$WORK/monitoring.config")
fi
if [ "${SERVER:-quickdraw}" = fastapi ]; then
  .venv/bin/python bench/fastapi_onnx.py "$WORK/export/1" "$PORT" >"$WORK/serve.log" 2>&1 &
else
  # shellcheck disable=SC2086 # SERVE_ARGS is a list of flags
  $QD serve --model-base-path "$WORK/export" --rest-api-port "$PORT" --port "$GRPC_PORT" \
    "${MONITORING[@]}" ${SERVE_ARGS:-} >"$WORK/serve.log" 2>&1 &
fi
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null; wait $SERVER_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break
  sleep 0.1
done
URL="http://127.0.0.1:$PORT/v1/models/quickdraw:predict"
# The request must succeed before it is timed (the FastAPI server takes images only).
if [ "${SERVER:-quickdraw}" != fastapi ]; then
  curl -sf -H 'Content-Type: application/json' \
    --data "$(sed -n "s/^wrk.body = '\(.*\)'$/\1/p" bench/wrk_predict.lua)" "$URL" | head -c 300
  echo
fi
head -1 "$WORK/serve.log"
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load average $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$CLIENT" = quickdraw ]; then
  GRPC=(--grpc "127.0.0.1:$GRPC_PORT")
  [ "${SERVER:-quickdraw}" = fastapi ] && GRPC=()
  IFS=, CSV="${CONNS[*]}"; unset IFS
  $QD bench serve --rest "http://127.0.0.1:$PORT" "${GRPC[@]}" --connections "$CSV" \
    --duration "$DURATION" --input "$INPUT" --label "server=${SERVER:-quickdraw} metrics=${METRICS:-on}"
else
  for c in "${CONNS[@]}"; do
    wrk -t"$THREADS" -c"$c" -d"${DURATION}s" --timeout 5s -s bench/wrk_predict.lua "$URL" \
      | tail -1 | sed "s/^{/{\"connections\":$c,\"wrk_threads\":$THREADS,/"
  done
fi
# The server's own counters: requests answered, inference calls and rows per call, refusals.
[ "${SERVER:-quickdraw}" = fastapi ] || echo "server: $(curl -sf "http://127.0.0.1:$PORT/healthz")"

#!/usr/bin/env bash
# Do runs that share one GPU overlap their kernels under MPS? (issue 15, item 4)
#   bash bench/mps_probe.sh        (on the GPU machine, wheels installed, PYTHONPATH set)
# The bare graphed train step of a short study run (rtmdet_tiny, batch 8, 320 px): one process alone,
# then 4 at once as separate processes (the GPU time-slices between their contexts), then 4 at once
# under a private MPS control daemon (pipe and log folders in /tmp, stopped on exit). Prints each
# process's img/s; the sum over the 4 against the one alone says what sharing gains.
set -uo pipefail
ARGS=(--model rtmdet_tiny --batch 8 --size 320 --modes cuda_graph --steps 600 --warmup 20 --no-peer)
DIR=/tmp/mps_probe; rm -rf "$DIR"; mkdir -p "$DIR/pipe" "$DIR/log"
rate() { python3 -c "import json,sys; print(sum(json.load(open(f))['rows'][0].get('img_per_s', 0) for f in sys.argv[1:]))" "$@"; }
four() {  # four() NAME: 4 processes at once; their summed img/s and the wall time
  local t0=$SECONDS
  for i in 1 2 3 4; do python3 bench/train_step.py "${ARGS[@]}" --out "$DIR/$1_$i.json" > "$DIR/$1_$i.log" 2>&1 & done
  wait; echo "$1: 4 processes, sum $(rate "$DIR/$1"_*.json) img/s, wall $((SECONDS - t0)) s"
}
python3 bench/train_step.py "${ARGS[@]}" --out "$DIR/alone.json" > "$DIR/alone.log" 2>&1
echo "alone: $(rate "$DIR/alone.json") img/s"
four shared
if ! command -v nvidia-cuda-mps-control > /dev/null; then echo "mps: nvidia-cuda-mps-control not found"; exit 0; fi
export CUDA_MPS_PIPE_DIRECTORY=$DIR/pipe CUDA_MPS_LOG_DIRECTORY=$DIR/log
trap 'echo quit | nvidia-cuda-mps-control; sleep 1' EXIT
nvidia-cuda-mps-control -d || { echo "mps: the control daemon did not start"; exit 0; }
four mps
echo get_server_list | nvidia-cuda-mps-control; tail -3 "$DIR/log/control.log" 2>/dev/null

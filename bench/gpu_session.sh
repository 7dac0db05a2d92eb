#!/usr/bin/env bash
# The GPU benchmark session, as one device command of at most 10 minutes (several GPUs when lent):
#   bash bench/gpu_session.sh [part1|part2|part3]   (the benchmarks below; all three parts by default,
#                                                     one part per device call of at most 10 minutes)
#   bash bench/gpu_session.sh part1b|pool|compile1|compile1c|compile3|final   (narrower calls; each part says what it runs)
#   bash bench/gpu_session.sh check      (the graphed bare step, the EMA update's two forms, a short run)
#   bash bench/gpu_session.sh screen     (the CPU-default recipe candidates of bench/recipes.txt, under MPS;
#                                         seeds 0 1 2, or SEEDS="0 1 2 3 4 5")
#   bash bench/gpu_session.sh pool_mps   (the 12-run study in the pool with its MPS daemon, then the candidates)
#   bash bench/gpu_session.sh ddp2       (2 GPUs: graphed DDP beside one GPU, then a lean short run)
#   bash bench/gpu_session.sh ddp5       (DDP without SyncBN at 8 and 6 workers per rank, images in RAM; SyncBN at 8)
#   bash bench/gpu_session.sh ddp4       (the e2e run under the autotuning rule; DDP without SyncBN at 14 and 10 workers)
#   bash bench/gpu_session.sh ddp3       (2 GPUs: the same without SyncBN; lean short runs with and without autotuning)
# Needs .whl/ carried (bash ../shared/gpu/fetch_wheels.sh && bash bench/fetch_peer_wheels.sh). Installs
# the wheels, then runs the benchmarks in order of importance, each with a time limit cut to what is
# left of the budget, and puts every JSON plus one tarball of logs into $OUT (<= 8 files):
#   train_step.json          bare step: eager, cuda_graph and Ultralytics YOLOv8s (target >= 1.55x)
#   e2e.json                 run.py end to end, rtmdet_s 640 batch 32, cuda_graph and eager
#   peer.json                Ultralytics YOLOv8s end to end on the same images
#   short.json               rtmdet_tiny 320 batch 8, 68 images, 150 epochs, cuda_graph
#   ddp.json                 torchrun end to end on 2 and 4 GPUs (those present)
#   train_step_compile.json  bare step with step_mode=compile (Inductor build time in first_s)
#   logs.tgz                 every run's log and the machine description
set -uo pipefail
START=$SECONDS
BUDGET=${BUDGET:-575}  # seconds for everything, install included
OUT=${OUT:-/tmp/out}
LOGS=/tmp/bench_logs
mkdir -p "$OUT" "$LOGS"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl \
  > "$LOGS/pip.log" 2>&1 || { echo "wheel install failed"; tail -20 "$LOGS/pip.log"; exit 1; }
# bytecode, as a normal pip install writes it (--no-compile above skips it; without it every run's start-up
# compiles ~1,800 sources again, ~5 s on these hosts)
python3 -m compileall -q -j 0 .site rtmdet_exp hydra_plugins > /dev/null 2>&1
# the same for the host's own packages (torch, sympy, ...): they come without bytecode and the host sets
# PYTHONDONTWRITEBYTECODE, so every process compiled ~2,200 modules again (~4.7 s of each run's start-up)
python3 -m compileall -q -j 0 "$(python3 -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')" \
  > /dev/null 2>&1
export PYTHONPATH=$PWD/.site:$PWD WANDB_MODE=disabled PYTHONUNBUFFERED=1 RTMDET_DATA=/tmp/rtmdet_data
export YOLO_OFFLINE=1 YOLO_VERBOSE=False

# run SECONDS NAME CMD...: CMD with a limit of SECONDS, cut to the budget left; its output in $LOGS/NAME.log
run() {
  local limit=$1 name=$2; shift 2
  local left=$(( BUDGET - (SECONDS - START) ))
  if (( left < 30 )); then echo "== $name: skipped, ${left}s left"; return; fi
  (( limit > left )) && limit=$left
  echo "== $name (limit ${limit}s, $(( SECONDS - START ))s used)"
  timeout -k 10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  echo "   exit $?"; grep -vE "Warning|warn\(" "$LOGS/$name.log" | tail -14
}

{ nvidia-smi; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0), \
torch.cuda.device_count(), 'GPUs')"; python3 -c "import ultralytics; print('ultralytics', ultralytics.__version__)"; \
} > "$LOGS/machine.log" 2>&1
head -3 "$LOGS/machine.log" | tail -1; tail -2 "$LOGS/machine.log"
GPUS=$(python3 -c "import torch; print(torch.cuda.device_count())")
WORKERS=$(( $(nproc) / (GPUS > 0 ? GPUS : 1) - 2 )); (( WORKERS > 14 )) && WORKERS=14; (( WORKERS < 2 )) && WORKERS=2

if [[ ${1:-bench} == screen ]]; then  # item 5's CPU-default recipe candidates (3 seeds), 12 runs at a time under MPS
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps/pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps/log
  mkdir -p /tmp/mps/pipe /tmp/mps/log
  nvidia-cuda-mps-control -d && trap 'echo quit | nvidia-cuda-mps-control' EXIT || echo "MPS did not start: runs take turns"
  run 520 recipe_screen python3 bench/recipe_screen.py --parallel 12 --seeds ${SEEDS:-0 1 2} --out /tmp/screen
  cp /tmp/screen/recipe_screen.json "$OUT/" 2>/dev/null
  tar -czf "$OUT/logs.tgz" -C /tmp bench_logs
  exit 0
fi

if [[ ${1:-bench} == pool_mps ]]; then  # the 12-run study with the pool's MPS daemon, then the recipe screen
  run 330 study_pool python3 bench/study_pool.py --workers 12 --out /tmp/study_pool
  cp /tmp/study_pool/study_pool.json "$OUT/" 2>/dev/null
  grep -h "MPS\|gpu_pool:" /tmp/study_pool/*.log 2>/dev/null | head -5
  run 240 recipe_screen python3 bench/recipe_screen.py --parallel 12 --out /tmp/screen
  cp /tmp/screen/recipe_screen.json "$OUT/" 2>/dev/null
  tar -czf "$OUT/logs.tgz" -C /tmp bench_logs
  exit 0
fi

if [[ ${1:-bench} == ddp2 ]]; then  # the graphed step under torchrun on 2 GPUs beside one GPU, a short run's profile
  W=$(( $(nproc) / 2 - 2 )); (( W > 14 )) && W=14
  run 420 ddp python3 bench/throughput.py --case e2e ddp --gpus 2 --modes cuda_graph --workers "$W" \
    --run-timeout 200 --out "$OUT/ddp.json"
  run 100 short python3 bench/throughput.py --case short --modes cuda_graph --lean-only --out "$OUT/short.json"
  cp -r bench/.cache/throughput/*.log "$LOGS/" 2>/dev/null
  tar -czf "$OUT/logs.tgz" -C /tmp bench_logs
  exit 0
fi

if [[ ${1:-bench} == ddp3 ]]; then  # graphed DDP on 2 GPUs with per-GPU BatchNorm; short runs with/without autotuning
  W=$(( $(nproc) / 2 - 2 )); (( W > 14 )) && W=14
  run 300 ddp python3 bench/throughput.py --case e2e ddp --gpus 2 --modes cuda_graph --workers "$W" \
    --override trainer.sync_bn=false --run-timeout 200 --work /tmp/tp_nosync --out "$OUT/ddp_nosync.json"
  for variant in autotune no_autotune autotune_again; do  # the first one also generates the 320 px dataset
    extra=(); [[ $variant == no_autotune ]] && extra=(--override trainer.cudnn_benchmark=false)
    run 100 "short_$variant" python3 bench/throughput.py --case short --modes cuda_graph --lean-only "${extra[@]}" \
      --work "/tmp/tp_$variant" --out "$OUT/short_$variant.json"
  done
  cp /tmp/tp_*/*.log "$LOGS/" 2>/dev/null
  tar -czf "$OUT/logs.tgz" -C /tmp bench_logs
  exit 0
fi

if [[ ${1:-bench} == ddp5 ]]; then  # graphed DDP at 8 and 6 workers per rank, images in RAM, with and without SyncBN
  run 200 ddp8 python3 bench/throughput.py --case e2e ddp --gpus 2 --modes cuda_graph --workers 8 \
    --override trainer.sync_bn=false data.cache_images=true --run-timeout 150 --work /tmp/tp8 --out "$OUT/ddp8.json"
  run 100 ddp6 python3 bench/throughput.py --case ddp --gpus 2 --modes cuda_graph --workers 6 \
    --override trainer.sync_bn=false data.cache_images=true --run-timeout 90 --one "$OUT/ddp8.json" --work /tmp/tp6 \
    --out "$OUT/ddp6.json"
  run 100 ddp8_syncbn python3 bench/throughput.py --case ddp --gpus 2 --modes cuda_graph --workers 8 \
    --override data.cache_images=true --run-timeout 90 --one "$OUT/ddp8.json" --work /tmp/tp8s \
    --out "$OUT/ddp8_syncbn.json"
  cp /tmp/tp[86]*/*.log "$LOGS/" 2>/dev/null
  tar -czf "$OUT/logs.tgz" -C /tmp bench_logs
  exit 0
fi

if [[ ${1:-bench} == ddp4 ]]; then  # e2e with the new autotuning rule; graphed DDP without SyncBN at 14 and 10 workers
  run 200 ddp14 python3 bench/throughput.py --case e2e ddp --gpus 2 --modes cuda_graph --workers 14 \
    --override trainer.sync_bn=false --run-timeout 150 --work /tmp/tp14 --out "$OUT/ddp14.json"
  run 100 ddp10 python3 bench/throughput.py --case ddp --gpus 2 --modes cuda_graph --workers 10 \
    --override trainer.sync_bn=false --run-timeout 90 --one "$OUT/ddp14.json" --work /tmp/tp10 --out "$OUT/ddp10.json"
  cp /tmp/tp1*/*.log "$LOGS/" 2>/dev/null
  tar -czf "$OUT/logs.tgz" -C /tmp bench_logs
  exit 0
fi

PART=${1:-bench}
if [[ $PART == bench || $PART == part1 ]]; then  # the step, the loop, short runs, inference latency
  run 120 train_step python3 bench/train_step.py --modes eager cuda_graph --out "$OUT/train_step.json"
  run 170 e2e python3 bench/throughput.py --case e2e --modes cuda_graph eager --workers "$WORKERS" \
    --bare "$OUT/train_step.json" --out "$OUT/e2e.json"
  run 260 short python3 bench/throughput.py --case short --modes cuda_graph --out "$OUT/short.json"
  run 200 latency python3 bench/latency.py --iters 50 --train-steps 200 --out "$OUT/latency.json"
fi
if [[ $PART == part1b ]]; then  # the short runs, the peer loop and latency (after part1's step and e2e)
  run 260 short python3 bench/throughput.py --case short --modes cuda_graph --out "$OUT/short.json"
  run 100 peer python3 bench/throughput.py --case peer --workers "$WORKERS" --out "$OUT/peer.json"
  run 200 latency python3 bench/latency.py --iters 50 --train-steps 200 --out "$OUT/latency.json"
fi
if [[ $PART == compile1 ]]; then  # the step and the loop with the network compiled, beside the peer
  run 260 train_step python3 bench/train_step.py --modes cuda_graph cuda_graph+compile --out "$OUT/train_step.json"
  run 300 e2e python3 bench/throughput.py --case e2e peer --modes cuda_graph+compile --workers "$WORKERS" \
    --bare "$OUT/train_step.json" --out "$OUT/e2e.json"
fi
if [[ $PART == compile1c ]]; then  # as compile1, the images decoded once into RAM (data.cache_images=true)
  run 260 train_step python3 bench/train_step.py --modes cuda_graph cuda_graph+compile --out "$OUT/train_step.json"
  run 300 e2e python3 bench/throughput.py --case e2e peer --modes cuda_graph+compile --workers "$WORKERS" \
    --override data.cache_images=true --bare "$OUT/train_step.json" --out "$OUT/e2e.json"
fi
if [[ $PART == compile3 ]]; then  # the step with the network compiled, latency (compiled b32 row), a lean short run
  run 230 train_step python3 bench/train_step.py --modes cuda_graph cuda_graph+compile --out "$OUT/train_step.json"
  run 240 latency python3 bench/latency.py --iters 50 --train-steps 200 --out "$OUT/latency.json"
  run 80 short python3 bench/throughput.py --case short --modes cuda_graph --lean-only --out "$OUT/short.json"
fi
if [[ $PART == final ]]; then  # the compiled step and loop (images in RAM), then short runs, each logging its start-up
  run 200 train_step python3 bench/train_step.py --modes cuda_graph+compile --out "$OUT/train_step.json"
  run 240 e2e python3 bench/throughput.py --case e2e --modes cuda_graph+compile --workers "$WORKERS" \
    --override data.cache_images=true --bare "$OUT/train_step.json" --out "$OUT/e2e.json"
  for i in 1 2; do
    run 60 "short_$i" python3 bench/throughput.py --case short --modes cuda_graph --lean-only --work "/tmp/short_$i" \
      --out "$OUT/short_$i.json"
    grep -h "start-up\|finished" /tmp/short_$i/*.log
  done
fi
if [[ $PART == check ]]; then  # after a change to the step: the graphed bare step, the EMA forms, one short run
  run 150 train_step python3 bench/train_step.py --modes cuda_graph --out "$OUT/train_step.json"
  run 60 ema_update python3 bench/ema_update.py --out "$OUT/ema_update.json"
  run 60 short python3 bench/throughput.py --case short --modes cuda_graph --lean-only --work /tmp/short \
    --out "$OUT/short.json"
  grep -h "start-up\|finished" /tmp/short/*.log
fi
if [[ $PART == pool ]]; then  # where a short run's start-up goes (cProfile), then the 12-run study
  mkdir -p /tmp/prof
  run 80 startup_profile python3 -m cProfile -o "$OUT/short_run.prof" run.py model=rtmdet_tiny trainer.device=cuda \
    data.img_size=320 data.batch_size=8 data.synthetic.num_train=68 trainer.max_epochs=150 logger=none \
    trainer.step_mode=cuda_graph trainer.checkpoint_interval=150 trainer.val_interval=150 \
    trainer.stage2_val_interval=150 hydra.run.dir=/tmp/prof/run
  run 450 study_pool python3 bench/study_pool.py --out /tmp/study_pool
  cp /tmp/study_pool/study_pool.json "$OUT/" 2>/dev/null
fi
if [[ $PART == bench || $PART == part2 ]]; then  # a full GPU: the 12-run study in the pool, then the peer loop
  run 450 study_pool python3 bench/study_pool.py --out /tmp/study_pool
  cp /tmp/study_pool/study_pool.json "$OUT/" 2>/dev/null
  run 100 peer python3 bench/throughput.py --case peer --workers "$WORKERS" --out "$OUT/peer.json"
fi
if [[ $PART == bench || $PART == part3 ]]; then  # several GPUs, and where a step's time goes
  if (( GPUS >= 2 )); then
    # half the cores per GPU for loader workers (at most 8) and the images in RAM: 1.82x on 2 GPUs (ddp5)
    DDP_WORKERS=$(( $(nproc) / GPUS / 2 )); (( DDP_WORKERS > 8 )) && DDP_WORKERS=8; (( DDP_WORKERS < 2 )) && DDP_WORKERS=2
    run 300 ddp python3 bench/throughput.py --case e2e ddp --gpus 2 4 --modes cuda_graph --workers "$DDP_WORKERS" \
      --override data.cache_images=true --run-timeout 150 --out "$OUT/ddp.json"
  fi
  run 100 profile python3 bench/profile_step.py --out "$OUT/profile_step.json"
fi

cp -r bench/.cache/throughput/*.log "$LOGS/" 2>/dev/null
tar -czf "$OUT/logs.tgz" -C /tmp bench_logs
echo "== done in $(( SECONDS - START ))s; in \$OUT: $(ls "$OUT" | tr '\n' ' ')"

#!/usr/bin/env bash
# One batched GPU session (device tool): install the carried wheels, then run the benchmarks and
# short real trainings. Results land in $OUT (JSON + logs). Usage on the device machine:
#   bash bench/gpu_session.sh [bench|recipes|all]
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl \
  && export PYTHONPATH=$PWD/.site:$PWD WANDB_MODE=offline PYTHONUNBUFFERED=1 || exit 1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
what=${1:-all}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"

if [[ $what == bench || $what == all ]]; then
  python3 bench/assigner.py --device cuda --out "$OUT/assigner.json" 2>&1 | tail -25
  python3 bench/train_step.py --model rtmdet_s --batch 32 --size 640 --compile --out "$OUT/train_step_s.json" 2>&1 | tail -8
fi

if [[ $what == recipes || $what == all ]]; then
  export RTMDET_DATA=/tmp/rtmdet_data
  # Candidate CPU-default recipes, run in fp32 on the GPU (same numerics as the CPU run) to see
  # which reaches mAP50 >= 0.5 on the built-in val split; their CPU wall time is measured on CPU.
  i=0
  while read -r line; do
    [[ -z $line ]] && continue
    i=$((i+1))
    echo "== recipe $i: $line"
    python3 run.py trainer.device=cuda trainer.precision=fp32 data.num_workers=8 $line \
      hydra.run.dir="/tmp/runs/recipe_$i" 2>&1 | grep -E "val/mAP |val/mAP50 |train_time|Error|error" | head -8
    cp "/tmp/runs/recipe_$i/results.json" "$OUT/recipe_$i.json" 2>/dev/null
    python3 -c "import json,sys; rows=[json.loads(l) for l in open(sys.argv[1])]; print(' curve:', [(r['epoch'], round(r['val/mAP50'],3)) for r in rows if 'val/mAP50' in r])" "/tmp/runs/recipe_$i/metrics.jsonl"
  done < "${RECIPE_FILE:-bench/recipes.txt}"
fi

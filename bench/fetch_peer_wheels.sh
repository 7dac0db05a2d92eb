#!/usr/bin/env bash
# Add the peer (Ultralytics) wheels to .whl/ after ../shared/gpu/fetch_wheels.sh has made it, so that
# bench/gpu_session.sh can run YOLOv8s beside ours on the GPU machine (no network there).
# Ultralytics 8.4.190 needs, beyond the machine's torch/torchvision/numpy/opencv/matplotlib/pillow/
# pyyaml/requests/scipy: ultralytics-thop (imported at model build), psutil (system checks) and
# nvidia-ml-py (pynvml, GPU queries). Left out: ultralytics-platform (imported lazily, Platform API only)
# and polars + polars-runtime-32 (52 MB, over the device tool's 64 MiB carry limit with the other
# wheels): its trainer reads results.csv with polars only when it saves a checkpoint, which
# bench/throughput.py turns off (save=False) and tolerates at the final epoch.
# Run from the repository root:  bash ../shared/gpu/fetch_wheels.sh && bash bench/fetch_peer_wheels.sh
set -euo pipefail
DEST=.whl
[[ -d $DEST ]] || { echo "run ../shared/gpu/fetch_wheels.sh first (it creates $DEST)" >&2; exit 1; }
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DEST" ultralytics==8.4.190 ultralytics-thop==2.2.3 psutil==7.2.2 nvidia-ml-py==13.615.71
dups=$(ls "$DEST"/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z_.' 'a-z--' | sort | uniq -d)
[[ -z "$dups" ]] || { echo "duplicate packages: $dups" >&2; exit 1; }
echo "fetch_peer_wheels: $(ls "$DEST"/*.whl | wc -l) wheels in $DEST"

#!/bin/bash
# Everything one short GPU lease should measure, in one call (see benchmarks/README.md, "GPU").
#   OUT=/tmp/out MINUTES=5.5 bash benchmarks/gpu_lease.sh
# Expects the unpaired training set in DATA (degraded/, clean/, val/{hazy,clear}); writes logs, reports and
# the validation-best restorers under OUT. Each part runs on its own: one failing does not stop the next.
set -u
DATA=${DATA:-.gpudata}; VAL=${VAL:-$DATA/val}; OUT=${OUT:?}; MINUTES=${MINUTES:-5.5}; DEVICE=${DEVICE:-cuda}; BENCH=${BENCH:-1}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-3}
R=$OUT/results; mkdir -p $R; DEADLINE=$(( $(date +%s) + ${SECONDS_TOTAL:-560} ))
pack() { tar czf $OUT/results.tgz -C $OUT results; }  # after every part: only 8 files come back
part() {  # part CAP_SECONDS command...: runs with what is left of the deadline, or is skipped
  local cap=$1; shift; local left=$(( DEADLINE - $(date +%s) - 15 ))
  if [ $left -lt 20 ]; then echo "skipped (no time left): $*" | tee -a $R/skipped.txt; return; fi
  timeout $(( cap < left ? cap : left )) "$@"; pack
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $R/gpu.txt 2>&1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())" | tee -a $R/gpu.txt

# The device image has no imagecodecs (the package's PNG decoder): give the validation pairs to it as TIFF.
if ls $VAL/*/*.png > /dev/null 2>&1; then
  python3 -c "
import glob, os, sys, numpy as np, tifffile
from PIL import Image
for f in glob.glob(sys.argv[1] + '/*/*.png'):
    o = '/tmp/val-tif/' + os.path.relpath(f, sys.argv[1])[:-4] + '.tif'
    os.makedirs(os.path.dirname(o), exist_ok=True)
    tifffile.imwrite(o, np.asarray(Image.open(f).convert('RGB')))
" $VAL && VAL=/tmp/val-tif
fi

# 1. training sweep (issue 5; the bf16 twin gives the quality effect of mixed precision, issue 6)
D=training/configs/default.yaml
RUNS=${RUNS:-"ft=$D:default:batch_size=4,lr=1e-4 b4=$D::batch_size=4 b4bf16=$D::batch_size=4,precision=bf16
  c256=$D::batch_size=4,crop=256 ft256=$D:default:batch_size=4,crop=256,lr=1e-4"}
timeout $(python3 -c "print(int($MINUTES*60 + 150))") python3 training/timed_runs.py \
  --degraded $DATA/degraded --clean $DATA/clean --val $VAL --out /tmp/sweep --minutes $MINUTES \
  --device $DEVICE --calibrate ${CALIBRATE:-50} --snapshots ${SNAPSHOTS:-4} $(for r in $RUNS; do echo --run $r; done) \
  2>&1 | tee $R/sweep.txt
cp /tmp/sweep/*.log /tmp/sweep/*.yaml /tmp/sweep/summary.json $R/ 2>/dev/null; cp -r /tmp/sweep/val $R/
for r in /tmp/sweep/*/; do cp $r/losses.csv $R/$(basename $r)_losses.csv 2>/dev/null; done
python3 benchmarks/export_best.py /tmp/sweep $OUT ${EXPORTS:-6} 2>&1 | tee -a $R/sweep.txt; pack

if [ "$BENCH" = 1 ]; then
# 2. restoration throughput and memory (issue 3), the default model's size, fp32 and bf16
part 120 python3 benchmarks/bench_restore.py --device $DEVICE --width 32 --blocks 6 --json $R/restore_gpu.json 2>&1 \
  | tee $R/restore_gpu.md
part 60 python3 benchmarks/bench_streaming.py --device $DEVICE --sides 1024 2048 4096 --json $R/streaming_gpu.json 2>&1 \
  | tee $R/streaming_gpu.md
part 40 python3 benchmarks/bench_precision.py --device $DEVICE --precision bf16 fp16 --side 1024 \
  --json $R/precision_gpu.json 2>&1 | tee $R/precision_gpu.md
part 60 python3 benchmarks/bench_restore.py --device $DEVICE --width 32 --blocks 6 --precision bf16 \
  --cases 1024-rgb-whole 4096-rgb-whole 8192-rgb-tiled --json $R/restore_gpu_bf16.json 2>&1 | tee $R/restore_gpu_bf16.md
# 3. training speed and memory, paper setting at 256² (issue 6), and the default model's size at 128²
part 100 python3 benchmarks/bench_train.py --device $DEVICE --steps 10 --only paper@256 --precision fp32 bf16 fp16 \
  --variants tapped --json $R/train_gpu.json 2>&1 | tee $R/train_gpu.md
part 60 python3 benchmarks/bench_train.py --device $DEVICE --steps 10 --only paper@256 cpu@128 --precision fp32 \
  --variants redundant tapped --json $R/train_gpu_baseline.json 2>&1 | tee $R/train_gpu_baseline.md
fi
pack && rm -rf $R
ls -la $OUT

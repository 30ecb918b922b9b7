#!/usr/bin/env bash
# One GPU check for issue 20, meant to finish in under 8 minutes on an H200, every result in one folder:
#   bash benchmarks/gpu_check.sh [OUT]          (OUT defaults to $OUT, else gpu-results/)
# Runs from the repository root with the machine's own python3 (which must hold torch with CUDA, pytest,
# numpy, pillow, tokenizers, safetensors, tqdm); the package is used from src/, nothing is installed.
#   env.txt           GPU, driver, torch, CUDA
#   parity.log        the CUDA parity tests (OFA_TEST_DEVICE=cuda) that need no ../shared: the in-repo small
#                     reference (answers of modelscope 1.40.2), the model's and the predictor's own tests
#   bench-tiny.txt    ofa-ground bench, OFA-tiny shape (random weights) at 512 px, fp32 and bf16
#   bench-demo.txt    ofa-ground bench, the bundled demo model (128 px)
#   eval.txt          ofa-ground eval of the demo model on 10,000 synthetic samples (the batched path)
#   train-demo.txt    benchmarks/train_throughput.py, demo preset, bf16
#   train-tiny.txt    benchmarks/train_throughput.py, OFA-tiny preset at 512 px, bf16
#   train-loop-demo.txt  ofa-ground train itself, demo preset, bf16, --log-every 50, 45 s: log.csv's samples/s
#   serve-load.txt    benchmarks/load_test.py: ofa-ground serve --device cuda, 32 clients, 30 s (needs .whl/:
#                     bash benchmarks/gpu_wheels.sh here first, and carry ".whl" in the device call)
# DEVICE=cpu QUICK=1 PYTHON=.venv/bin/python runs the same steps small, with 5x the time limits, on a CPU (to
# check the script itself, not to measure).
# Not here: the full reference fixture (../shared/reference, 66 MB: more than a device call carries).
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${1:-${OUT:-gpu-results}}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
QUICK=${QUICK:-}
mkdir -p "$RESULTS"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OFA="$PY -m ofa_grounding.cli"
TMP=$(mktemp -d)
N_EVAL=${QUICK:+200}; N_EVAL=${N_EVAL:-10000}
ITERS=${QUICK:+10}; ITERS=${ITERS:-20}  # bench takes at least 10
STEPS=${QUICK:+3}; STEPS=${STEPS:-30}
LIMIT_SCALE=${QUICK:+5}; LIMIT_SCALE=${LIMIT_SCALE:-1}  # a CPU runs the 512 px steps far slower
BATCH_DEMO=${QUICK:+8}; BATCH_DEMO=${BATCH_DEMO:-256}
BATCH_TINY=${QUICK:+2}; BATCH_TINY=${BATCH_TINY:-64}
step() {  # step NAME SECONDS COMMAND...: run it under a time limit, output to RESULTS/NAME, say how it ended
  local name=$1 limit=$(( $2 * LIMIT_SCALE )); shift 2
  local start; start=$(date +%s)
  timeout "$limit" bash -c "$*" > "$RESULTS/$name" 2>&1
  local rc=$?
  printf '%-16s rc=%-3s %4ss  %s\n' "$name" "$rc" "$(( $(date +%s) - start ))" "$*" | tee -a "$RESULTS/steps.txt"
}

step env.txt 60 "nvidia-smi; $PY -c 'import torch; print(torch.__version__, torch.version.cuda, \
torch.cuda.is_available() and torch.cuda.get_device_name())'"
step parity.log 150 "OFA_TEST_DEVICE=$DEVICE $PY -m pytest -q -p no:cacheprovider tests/test_small_reference.py \
tests/test_model.py tests/test_predictor.py -k 'not cpu_without'"

# A random-weight OFA-tiny (512 px) in our layout, for the speed of the shape people use.
step make-tiny.txt 60 "$PY - <<'EOF'
from ofa_grounding.checkpoint import save_checkpoint
from ofa_grounding.loader import load_model
c = load_model('preset:tiny', allow_preset=True)
save_checkpoint('$TMP/tiny', c.model, c.tokenizer_dir, c.preprocess, c.generation)
EOF"
step bench-tiny.txt 150 "$OFA bench --model $TMP/tiny --device $DEVICE --precisions fp32,bf16 --iters $ITERS --json"
step bench-demo.txt 90 "$OFA bench --device $DEVICE --precisions fp32,bf16 --iters $ITERS"

step synthetic.txt 60 "$OFA make-synthetic $TMP/syn --world v1 --n $N_EVAL --seed 3 --workers 8"
step eval.txt 90 "$OFA eval --data $TMP/syn --split train --split val --split test --device $DEVICE \
--batch-size 64 --json --no-progress"  # samples/s: N_EVAL over this step's seconds in steps.txt (load included)
step train-demo.txt 90 "$PY benchmarks/train_throughput.py --data $TMP/syn --model demo --device $DEVICE \
--batch-size $BATCH_DEMO --workers 8 --steps $STEPS --bf16"
step train-tiny.txt 90 "$PY benchmarks/train_throughput.py --data $TMP/syn --model tiny --device $DEVICE \
--batch-size $BATCH_TINY --workers 8 --steps $STEPS --bf16"
# The trainer itself (not the benchmark's loop): demo preset, bf16, loader in processes, log.csv every 50 updates
# (the host reads the device only then); samples/s is log.csv's column, its last rows in the output.
LOG_EVERY=${QUICK:+1}; LOG_EVERY=${LOG_EVERY:-50}
MINUTES=${QUICK:+0.3}; MINUTES=${MINUTES:-0.75}
step train-loop-demo.txt 75 "$OFA train --model demo --data $TMP/syn --out $TMP/run --device $DEVICE --bf16 \
--batch-size $BATCH_DEMO --workers 8 --cache-images --augment flip --max-steps 100000 --max-minutes $MINUTES \
--log-every $LOG_EVERY --save-every 100000 --no-progress; tail -4 $TMP/run/log.csv"
# Serving (the micro-batcher on the device): 32 loopback clients for 30 s against `ofa-ground serve`, OFA-tiny
# (random weights) in bf16. fastapi and uvicorn are not on the GPU machine: `bash benchmarks/gpu_wheels.sh` here
# puts them in .whl/, which the device call carries; they are installed into a folder of their own.
if ! $PY -c "import fastapi, uvicorn, multipart" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$TMP/site" .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:$TMP/site
fi
SECONDS_LOAD=${QUICK:+5}; SECONDS_LOAD=${SECONDS_LOAD:-30}
step serve-load.txt 90 "$PY benchmarks/load_test.py --model $TMP/tiny --images $TMP/syn/images --device $DEVICE \
--precision bf16 --clients 32 --requests 0 --duration $SECONDS_LOAD"
rm -rf "$TMP"
cat "$RESULTS/steps.txt"

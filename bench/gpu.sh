#!/usr/bin/env bash
# The figures of bench/RESULTS.md's "Still to measure: the GPU settings", in that order, in one call budgeted at
# 8 minutes on one H200 (the budgets below are estimates; it has not run on one yet): bench/step.py,
# bench/scaling.py, bench/device_augment.py, then bench/input_wait.py with the pixel work on the host and on the
# device. Each stage's stdout (its table) goes to OUTDIR/<stage>.txt, scaling's
# plot and data to OUTDIR/scaling.png and .json, what ran where to OUTDIR/env.txt: 8 files.
#
#   bash bench/gpu.sh [OUTDIR]          # OUTDIR: default $OUT, else bench/gpu_out
#   bash bench/gpu.sh --tiny [OUTDIR]   # the same stages at toy sizes, on any machine (tests/test_bench_gpu.py)
#
# It needs JAX with CUDA, and PyTorch and torchvision for the reference columns. Wheels in .whl/ are installed for
# this run only (e.g. ml_collections, pure Python, on a machine that lacks it: python3 -m pip download --no-deps -d
# .whl ml-collections==1.1.0). Without TensorFlow, device_augment (its records are drawn by the tf.data code) and
# both input_wait runs write 'skipped: ...'. A stage whose modules are missing, or that would not fit in what is left
# of the 8 minutes, is skipped, not failed; the exit status is non-zero only if a stage that ran failed.
#
# Budgets (timeout per stage; one ResNet-50 step compiles in ~1-2 min, then steps take ~0.2-0.5 s):
#   env              30 s  versions and devices
#   step            180 s  1 compile, 3 rounds x 10 steps of ours and of the reference (AMP, channels-last)
#   scaling         240 s  3 compiles: the GPU setting, K = 4096, top-k 0 (5 steps each; the base point twice)
#   device_augment  180 s  2 compiles + the augmentation alone, 3 rounds x 10 steps
#   input_wait      150 s  each run: 512 JPEGs, 1 compile, 2 rounds x 20 steps
# They start only while their budget fits in the 460 s total: step and scaling always; where TensorFlow is
# installed the rest as time is left (run them by hand with the commands in bench/RESULTS.md).

set -u
root=$(cd "$(dirname "$0")/.." && pwd)
tiny=false
if [ "${1:-}" = --tiny ]; then
  tiny=true
  shift
fi
out=${1:-${OUT:-$root/bench/gpu_out}}
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 2
py=${PYTHON:-python3}
start=$SECONDS
status=0
cd "$root" || exit 2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2  # a stage stopped by its timeout keeps what it printed
# The same programs recur (scaling's base point in each sweep, step.py's step in device_augment.py): compile once.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$tmp/xla_cache}

if $tiny; then
  total=1800  # CI's contended cores: the stages' own timeouts are the limit
  export JAX_DISABLE_MOST_OPTIMIZATIONS=1  # toy sizes measure nothing: compile fast
  step_size=(--arch=resnet18 --stem=cifar --large=16 --small=8 --num_small=0 --batch=2 --queue=16 --steps=1
    --rounds=1)
  augment_size=(--arch=resnet10 --large=16 --small=8 --num_small=1 --batch=2 --queue=16 --steps=1 --rounds=1)
  scaling_size=(--arch=resnet10 --width=0.125 --stem=cifar --large=16 --small=8 --batch=2 --steps=1
    --base_queue=16 --base_num_small=0 --base_topk=4 --queues=16 --topks= --num_smalls= --devices=)
  input_size=(--config=configs/knn.py --jpegs=4 --config.batch_size=2 --config.bn_groups=1 --config.moco.queue_size=16
    --config.moco.nn_topk=4 --config.model.arch=resnet10 --config.model.width=0.125 --config.crops.large_size=16
    --config.crops.small_size=8 --config.crops.num_small=1 --config.crops.augment_on_device=True --steps=1
    --rounds=1)
else
  total=460
  step_size=(--arch=resnet50 --stem=imagenet --large=160 --small=96 --num_small=4 --batch=256 --queue=65536
    --dtype=bfloat16 --steps=10 --rounds=3)
  augment_size=("${step_size[@]}")
  # The K and top-k sweeps through the GPU setting: the NN mining and the queue terms as shares of its step.
  scaling_size=(--arch=resnet50 --width=1.0 --stem=imagenet --large=160 --small=96 --batch=256 --dtype=bfloat16
    --steps=5 --base_queue=65536 --base_num_small=4 --base_topk=20 --queues=4096,65536 --topks=0,20 --num_smalls=
    --devices=)
  input_size=(--config=configs/knn.py:imagenet --jpegs=512 --config.crops.num_small=4 --config.crops.large_size=160
    --config.model.dtype=bfloat16 --steps=20 --rounds=2)
  wheels=(.whl/*.whl)
  if [ -e "${wheels[0]}" ]; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --target "$tmp/site" "${wheels[@]}" &&
      export PYTHONPATH="$tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  if [ "$("$py" -c 'import jax; print(jax.default_backend())' 2>/dev/null)" != gpu ] &&
    command -v nvidia-smi >/dev/null; then
    jax_version=$(sed -n 's/^jax==//p' requirements.txt)
    echo "JAX sees no GPU: trying pip install jax[cuda13]==$jax_version (needs the network)" >&2
    timeout 120 "$py" -m pip install -q --retries 0 --timeout 10 "jax[cuda13]==$jax_version" ||
      echo 'could not install it: going on with the JAX there is' >&2
  fi
fi
deadline=$((start + total))

# stage NAME BUDGET_S 'MODULES IT NEEDS' COMMAND...: COMMAND's stdout to OUTDIR/NAME.txt (and the console).
stage() {
  local name=$1 budget=$2 needs=$3 file="$out/$1.txt" missing rc
  shift 3
  rm -f "$out/$name".*
  echo "== $name" >&2
  missing=$("$py" -c 'import importlib.util as u, sys; print(*[m for m in sys.argv[1:] if not u.find_spec(m)])' $needs)
  if [ -n "$missing" ]; then
    echo "skipped: python modules missing here: $missing" | tee "$file"
  elif [ $((deadline - SECONDS)) -lt "$budget" ]; then
    echo "skipped: $((deadline - SECONDS)) s left of the $total s total, this stage needs $budget s" | tee "$file"
  else
    timeout -k 10 "$budget" "$@" | tee "$file"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
      status=1
      if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "failed: stopped at its $budget s timeout" | tee -a "$file"
      else
        echo "failed: exit status $rc" | tee -a "$file"
      fi
    fi
  fi
}

stage env 30 jax "$py" -c 'import platform, sys, jax
print(platform.node(), platform.machine(), "python", sys.version.split()[0], "jax", jax.__version__)
print(jax.default_backend(), jax.devices())'
command -v nvidia-smi >/dev/null && nvidia-smi -L | tee -a "$out/env.txt"
# JAX takes 75 % of the GPU's memory at its first use by default: the PyTorch reference needs its share too.
stage step 180 'jax ml_collections torch torchvision' \
  env XLA_PYTHON_CLIENT_MEM_FRACTION=.45 "$py" bench/step.py "${step_size[@]}"
stage scaling 240 'jax ml_collections matplotlib' "$py" bench/scaling.py "${scaling_size[@]}" --out="$out/scaling"
stage device_augment 180 'jax ml_collections tensorflow' "$py" bench/device_augment.py "${augment_size[@]}"
stage input_wait 150 'jax ml_collections tensorflow clu sklearn' "$py" bench/input_wait.py "${input_size[@]}"
# At toy sizes input_wait runs in this mode itself (the one whose synthetic batches keep the records), so only once.
$tiny || stage input_wait_device 150 'jax ml_collections tensorflow clu sklearn' \
  "$py" bench/input_wait.py "${input_size[@]}" --config.crops.augment_on_device=True
exit $status

#!/usr/bin/env bash
# The GPU checks of SAM 2.1, for one call of a lent GPU machine (see DEVELOPERS.md, "GPU checks"):
#   speed  benchmarks/sam2_speed.py --warm-up --compile, bf16, at 200 and 800 frames vs Meta (4 min on an H100)
#   tests  the GPU cases of the tests that hold on each device (CI runs the CPU ones): transfers,
#          Meta's arithmetic, the split attention, the compiled step and encoder (1.5 min)
#   step   benchmarks/sam2_step.py: the per-frame step eager, compiled and frozen, and its costliest kernels (3 min)
#   overlap  benchmarks/sam2_overlap.py: would a second CUDA stream for the encoder pay? (about 2.5 min;
#          not in the default three)
# Usage there: bash benchmarks/gpu_checks.sh [speed] [tests] [step] [overlap]   (no argument: the
# first three, the figures first, as a lent machine's time may run out before the end)
# It installs the wheels `make device-wheels` put in .whl/dev (the machine reaches no registry).
set -uo pipefail
cd "$(dirname "$0")/.."
command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 \
    || { echo "gpu_checks.sh: no NVIDIA GPU here (nvidia-smi missing or finds none); run it on a lent GPU machine" >&2; exit 1; }
compgen -G ".whl/dev/*.whl" >/dev/null \
    || { echo "gpu_checks.sh: no wheels in .whl/dev; run 'make device-wheels' first and carry .whl/dev" >&2; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/dev/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(speed tests step)
status=0
for stage in "${stages[@]}"; do
    echo "== $stage ($(date +%T))"
    case "$stage" in
        tests) python3 -m pytest -q -p no:cacheprovider tests/test_preprocess.py tests/test_sam2_reference.py \
                   tests/test_sam2_engine.py \
                   -k "(grey_level or copies or key_blocks or position_codes or compiles_in_the_warm_up) and not cpu" \
                   || status=1 ;;
        step) python3 benchmarks/sam2_step.py || status=1 ;;
        overlap) python3 benchmarks/sam2_overlap.py || status=1 ;;
        speed) python3 benchmarks/sam2_speed.py --frames 200 800 --precision bf16 --warm-up --compile || status=1 ;;
        *) echo "unknown stage $stage (speed, tests, step, overlap)"; status=1 ;;
    esac
done
echo "== done ($(date +%T)), status $status"
exit $status

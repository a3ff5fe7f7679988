#!/usr/bin/env bash
# The GPU checks of the torch engine, in one go: the equivalence tests on CUDA, bfloat16 training on Tiny
# Shakespeare, tokens/s and MFU at nanoGPT's Shakespeare size (sections 1-3: about 5 minutes on one H100), and
# nanoGPT's shakespeare_char recipe through microgpt, whole (section 4, --preset shakespeare-gpu: wall time, time to
# held-out 1.50 and 1.47, best held-out, tokens/s, MFU), beside nanoGPT itself when NANOGPT names a checkout of it
# (section 5). Sections 4 and 5 were written without a GPU at hand and have not run on one yet.
# Usage: [NANOGPT=path/to/nanoGPT] scripts/gpu_check.sh [OUT_DIR]   (logs land in OUT_DIR, default gpu_check/)
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p "${1:-gpu_check}"
out="$(cd "${1:-gpu_check}" && pwd)"
export PYTHONUNBUFFERED=1 PYTHONPATH=.
py=python3
nvidia-smi -L | tee "$out/gpu.txt"
$py -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__)" | tee -a "$out/gpu.txt"

echo "== 1. equivalence on CUDA (the torch tests; the torchrun ones use gloo on the CPU)"
$py -m pytest tests/test_engines.py tests/test_torch.py tests/test_dropout.py \
    -k "torch or fused or float32 or padding or batch_is or dropout" \
    -q -p no:cacheprovider -o addopts="" 2>&1 | tail -15 | tee "$out/tests.txt"

echo "== 2. bfloat16 training on Tiny Shakespeare, 4 x 128, block 64, batch 64, 600 steps"
$py -m microgpt train --data shakespeare --engine torch --dtype bfloat16 --n-layer 4 --n-embd 128 --n-head 4 \
    --block-size 64 --batch-size 64 --steps 600 --lr 3e-3 --schedule cosine --warmup 50 --init-std 0.02 \
    --weight-decay 0.1 --grad-clip 1 --beta1 0.9 --eval-every 200 --log-every 100 --num-samples 1 \
    --out "$out/bf16" 2>&1 | tee "$out/bf16.txt"

echo "== 3. nanoGPT's Shakespeare size: 6 x 384, 6 heads, block 256, batch 64"
for variant in "--dtype bfloat16 --attention sdpa" "--dtype bfloat16 --attention sdpa --compile" \
               "--dtype float32 --attention manual"; do
    echo "-- $variant"
    $py -m microgpt train --data shakespeare --engine torch $variant --n-layer 6 --n-embd 384 --n-head 6 \
        --block-size 256 --batch-size 64 --steps 200 --lr 1e-3 --warmup 20 --schedule cosine --init-std 0.02 \
        --eval-every 1000 --log-every 50 --num-samples 0 --out "$out/nanogpt-$(echo $variant | tr -d ' -')" 2>&1 \
        | tee -a "$out/nanogpt.txt" | grep -E "step|error|Error"
done

echo "== 4. nanoGPT's shakespeare_char recipe through microgpt: --preset shakespeare-gpu (dropout 0.2, 5,000 steps)"
$py -m microgpt train --preset shakespeare-gpu --engine torch --attention sdpa --compile --log-every 100 \
    --num-samples 1 --out "$out/recipe" 2>&1 | tee "$out/recipe.txt" | grep -E "held-out|error|Error"
$py scripts/run_figures.py "$out/recipe" 1.50 1.47 | tee "$out/recipe_figures.txt"

if [ -n "${NANOGPT:-}" ]; then
    echo "== 5. nanoGPT itself, its config/train_shakespeare_char.py, on our copy of the data (no network)"
    cp microgpt/data/tinyshakespeare.txt "$NANOGPT/data/shakespeare_char/input.txt"
    (cd "$NANOGPT" && $py data/shakespeare_char/prepare.py > /dev/null && start=$($py -c "import time; print(time.time())") \
        && $py train.py config/train_shakespeare_char.py 2>&1 | tee "$out/nanogpt_recipe.txt" | grep -E "^step" \
        && $py -c "import time; print(f'nanoGPT wall time: {time.time() - $start:.1f} s')")
fi

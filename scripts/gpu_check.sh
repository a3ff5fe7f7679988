#!/usr/bin/env bash
# The GPU checks of the torch engine, section by section:
#   1  the equivalence tests on CUDA, and that an ordinary step never waits for the GPU       (about 2 min)
#   2  bfloat16 training on Tiny Shakespeare, 4 x 128                                          (under 1 min)
#   3  tokens/s and MFU at nanoGPT's Shakespeare size: SDPA, SDPA compiled, float32            (about 2 min)
#   4  nanoGPT's shakespeare_char recipe through microgpt, whole: --preset shakespeare-gpu with --attention sdpa
#      --compile; wall time, time to held-out 1.50 and 1.47, best held-out, tokens/s, MFU      (2-3 min)
#   5  nanoGPT itself on the same recipe, when NANOGPT names a checkout of it                   (about 2.5 min)
#   6  where the time of the preset's step goes (scripts/profile_step.py), compiled and not    (about 2 min)
# The times are estimates from one H100 (sections 1-3) and from nanoGPT's own figures; 4 to 6 have not run on a GPU
# yet. A machine lent for 15 minutes fits two calls: SECTIONS="1 4 5", then SECTIONS="6 2 3".
# Usage: [SECTIONS="1 4 5"] [NANOGPT=path/to/nanoGPT] scripts/gpu_check.sh [OUT_DIR]   (default: every section;
#        logs land in OUT_DIR, default gpu_check/: one .txt per section, at most 8, beside the runs' directories).
#        A checkout of nanoGPT to carry to a GPU machine, ignored through .git/info/exclude:
#        mkdir .nanogpt && git -C NANOGPT_GIT_DIR archive HEAD | tar -x -C .nanogpt
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p "${1:-gpu_check}"
out="$(cd "${1:-gpu_check}" && pwd)"
export PYTHONUNBUFFERED=1 PYTHONPATH=.
py=python3
sections=" ${SECTIONS:-1 2 3 4 5 6} "
section() { [[ "$sections" == *" $1 "* ]] && echo "== $1. $2"; }  # true, and says so, where asked for
clock() { $py -c "import time; print(time.time())"; }
since() { $py -c "import time; print(f'$1 wall time: {time.time() - $2:.1f} s')"; }  # NAME START
stamp() {  # each line of stdin after the seconds since $1
    $py -u -c "import sys, time; [print(f'{time.time() - $1:7.1f}s {line}', end='') for line in sys.stdin]"
}
nvidia-smi -L | tee "$out/gpu.txt"
$py -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__)" | tee -a "$out/gpu.txt"

if section 1 "equivalence on CUDA, and steps that never wait (the torch tests; the torchrun ones use gloo on the CPU)"; then
    $py -m pytest tests/test_engines.py tests/test_torch.py tests/test_dropout.py \
        -k "torch or fused or float32 or padding or batch_is or dropout" \
        -q -p no:cacheprovider -o addopts="" 2>&1 | tail -15 | tee "$out/tests.txt"
fi

if section 2 "bfloat16 training on Tiny Shakespeare, 4 x 128, block 64, batch 64, 600 steps"; then
    $py -m microgpt train --data shakespeare --engine torch --dtype bfloat16 --n-layer 4 --n-embd 128 --n-head 4 \
        --block-size 64 --batch-size 64 --steps 600 --lr 3e-3 --schedule cosine --warmup 50 --init-std 0.02 \
        --weight-decay 0.1 --grad-clip 1 --beta1 0.9 --eval-every 200 --log-every 100 --num-samples 1 \
        --out "$out/bf16" 2>&1 | tee "$out/bf16.txt"
fi

if section 3 "nanoGPT's Shakespeare size: 6 x 384, 6 heads, block 256, batch 64"; then
    for variant in "--dtype bfloat16 --attention sdpa" "--dtype bfloat16 --attention sdpa --compile" \
                   "--dtype float32 --attention manual"; do
        echo "-- $variant"
        $py -m microgpt train --data shakespeare --engine torch $variant --n-layer 6 --n-embd 384 --n-head 6 \
            --block-size 256 --batch-size 64 --steps 200 --lr 1e-3 --warmup 20 --schedule cosine --init-std 0.02 \
            --eval-every 1000 --log-every 50 --num-samples 0 --out "$out/nanogpt-$(echo $variant | tr -d ' -')" \
            2>&1 | tee -a "$out/nanogpt.txt" | grep -E "step|error|Error"
    done
fi

if section 4 "nanoGPT's shakespeare_char recipe through microgpt: --preset shakespeare-gpu (dropout 0.2, 5,000 steps)"
then
    start=$(clock)
    $py -m microgpt train --preset shakespeare-gpu --engine torch --attention sdpa --compile --log-every 100 \
        --num-samples 1 --out "$out/recipe" 2>&1 | tee "$out/recipe.txt" | grep -E "held-out|error|Error"
    since microgpt "$start" | tee "$out/recipe_figures.txt"  # (the process's; the log's times start after imports)
    $py scripts/run_figures.py "$out/recipe" 1.50 1.47 | tee -a "$out/recipe_figures.txt"
fi

if section 5 "nanoGPT itself, its config/train_shakespeare_char.py, on our copy of the data"; then
    if [ -z "${NANOGPT:-}" ]; then
        echo "skipped: NANOGPT names no checkout of nanoGPT"
    else
        cp microgpt/data/tinyshakespeare.txt "$NANOGPT/data/shakespeare_char/input.txt"
        (cd "$NANOGPT" && $py data/shakespeare_char/prepare.py > /dev/null && start=$(clock) \
            && $py train.py config/train_shakespeare_char.py 2>&1 | stamp "$start" | tee "$out/nanogpt_recipe.txt" \
            | grep -E "^ *[0-9.]+s step" && since nanoGPT "$start")
        $py - "$out/nanogpt_recipe.txt" 1.50 1.47 <<'EOF'
import re, sys  # nanoGPT's figures as run_figures.py prints ours, from its evaluations stamped with their time
evaluations = [(float(seconds), int(step), float(loss)) for seconds, step, loss in re.findall(
    r"^ *([\d.]+)s step (\d+): train loss [\d.]+, val loss ([\d.]+)", open(sys.argv[1]).read(), re.M)]
for target in sys.argv[2:]:
    reached = [(seconds, step) for seconds, step, loss in evaluations if loss <= float(target)]
    print(f"nanoGPT held-out {target}: " + ("at step {1}, after {0:.1f} s".format(*reached[0]) if reached
                                             else "not reached"))
print(f"nanoGPT best held-out loss: {min(loss for *_, loss in evaluations):.4f}" if evaluations else "no evaluations")
EOF
    fi
fi

if section 6 "where the time of the preset's step goes: compiled, then not (scripts/profile_step.py)"; then
    for variant in "--compile" ""; do
        echo "-- --attention sdpa $variant"
        $py scripts/profile_step.py --preset shakespeare-gpu --engine torch --attention sdpa $variant 2>&1 \
            | tee -a "$out/profile.txt" | grep -v "^USDT"  # (the profiler's own log lines, on stderr)
    done
fi

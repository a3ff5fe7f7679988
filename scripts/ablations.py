"""What each piece does: the full model and each ablation trained on names at one fixed budget, side by side.

Trains the full model, then the same model without each piece (`train --ablate NAME`), from the same initial weights
and the same batches, each in OUT/<name>; prints the README's table (each run's best held-out loss beside the full
model's, and what to look at in its report, with the numbers it measured); writes OUT/compare.html (`compare`) and
OUT/table.md. A run already finished in OUT is read, not trained again. About 10 minutes on the development machine.

Usage: python scripts/ablations.py [OUT] [--steps N]   (default: ablations/, 3000 steps; fewer for a quick look)
"""
import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from collections import Counter

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
from microgpt.ablations import ABLATIONS  # noqa: E402
from microgpt.datasets import Dataset  # noqa: E402
from microgpt.loading import read  # noqa: E402
from microgpt.logs import Log, mean_dead  # noqa: E402

BUDGET = ["--data", "names", "--n-layer", "4", "--n-embd", "64", "--n-head", "4", "--block-size", "16",
          "--batch-size", "32", "--lr", "3e-3", "--schedule", "cosine",
          "--min-lr-ratio", "0.1", "--weight-decay", "0.1", "--grad-clip", "1", "--beta1", "0.9",
          "--init-std", "0.05", "--dtype", "float32", "--engine", "numpy", "--eval-every", "500",
          "--log-every", "100"]
SAMPLES = ["--num-samples", "5", "--temperature", "0.8"]  # (printed again when a finished run is read)
LOOK = {  # what to look at in each run's report, with the numbers this script measured in it
    "full": "the baseline every other row is measured against",
    "rmsnorm": "activation RMS leaving the last layer: {rms:.2f} (full model {full_rms:.2f}); nothing but the "
               "weights sets the size of the stream",
    "residual": "gradient norm: {grad:.2f} at the end (full model {full_grad:.2f}): the gradient reaches the lower "
                "blocks only through every block above them",
    "position": "attention maps: with no wpe, the causal mask alone still tells a position how many letters it "
                "sees (a head that spreads its weight evenly gives each 1/t)",
    "attn-scale": "attention maps: scores sqrt(head_dim) = 4 times larger, sharper rows; {collapsed} collapsed-head "
                  "warnings (full model {full_collapsed})",
    "attention": "samples: each letter chosen from the one before it and its position alone, a bigram model",
    "mlp": "the gap from train to held-out loss: {gap:+.3f} (full model {full_gap:+.3f})",
    "relu": "best held-out {best:.4f} against {mlp_best:.4f} with no MLP at all: without the ReLU the MLP is one "
            "linear map (mlp_fc2 times mlp_fc1)",
    "causal-mask": "held-out loss {best:.4f}: every position reads the next letter, the answer; sampling has no next "
                   "letter to read, and the samples end at once",
}


def budget(steps):
    """The options of every run: BUDGET, `steps` steps, the first tenth of them (at most 100) warming up."""
    return [*BUDGET, "--steps", str(steps), "--warmup", str(min(100, steps // 10))]


def microgpt(*args):
    """`python -m microgpt ARGS...` from this checkout, its output captured."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "microgpt", *args], capture_output=True, text=True, env=env)


def train(out, name, steps):
    """Train (or finish) the run `name` in OUT/name; return its stdout and how long this call took."""
    run_dir = os.path.join(out, name)
    args = ["--resume", run_dir] if os.path.exists(os.path.join(run_dir, "checkpoint.safetensors")) else \
        [*budget(steps), "--out", run_dir, *([] if name == "full" else ["--ablate", name])]
    args += SAMPLES
    started = time.perf_counter()
    result = microgpt("train", *args)
    if result.returncode not in (0, 1):  # (1: the run diverged, which the table says)
        sys.exit(f"{name}: {result.stderr.strip()}")
    return result.stdout + result.stderr, time.perf_counter() - started


def measured(out, name, output):
    """The numbers of run `name` that the table and LOOK use."""
    log, (_, meta, _) = Log(os.path.join(out, name)), read(os.path.join(out, name, "checkpoint.safetensors"))
    last, train_loss = log.health[-1], log.train[-1][1]
    samples = [line.split(maxsplit=1)[1] if len(line.split()) > 1 else "(empty)" for line in output.splitlines()
               if line[:3].strip().isdigit() and line[3:5] == "  "][:3]
    return {"best": meta["best_held_out"], "train": train_loss, "step": meta["step"],
            "gap": meta["best_held_out"] - train_loss, "grad": last.grad_norm,
            "rms": last.activation_rms[-1], "dead": mean_dead(last.dead_relu),
            "collapsed": sum("collapsed" in w for h in log.health for w in h.warnings),
            "elapsed": log.elapsed, "samples": samples, "diverged": "training diverged" in output}


def letter_frequencies():
    """The held-out loss of counting alone, the floor any model should beat: each next letter (or the end) drawn from
    its frequency in the training names, whatever came before."""
    data = Dataset("names", None, random.Random(42))  # the runs' split (seed 42)
    counts = Counter(token for doc in data.train for token in doc[1:])
    held_out = [token for doc in data.held_out for token in doc[1:]]
    return -sum(math.log(counts[token] / sum(counts.values())) for token in held_out) / len(held_out)


def table(results):
    full = results["full"]
    lines = ["| taken out | best held-out | vs full | train loss (end) | samples | what to look at in its report |",
             "| --- | ---: | ---: | ---: | --- | --- |",
             f"| everything (letter frequencies alone) | {letter_frequencies():.4f} | | | | the floor: what counting "
             "letters gives, with no model |"]
    for name, r in results.items():
        look = LOOK[name].format(**r, **{f"full_{key}": value for key, value in full.items()},
                                 mlp_best=results["mlp"]["best"])
        best = f"{r['best']:.4f}" + (f" (diverged at step {r['step'] + 1})" if r["diverged"] else "")
        difference = "" if name == "full" else f"{r['best'] - full['best']:+.4f}"
        lines.append(f"| {'nothing (the full model)' if name == 'full' else f'`{name}`'} | {best} | {difference} | "
                     f"{r['train']:.4f} | {', '.join(r['samples'])} | {look} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", nargs="?", default="ablations", help="where the runs go (default: ablations/)")
    parser.add_argument("--steps", type=int, default=3000, help="steps of each run (default: 3000, the table's)")
    args = parser.parse_args()
    out, started, results = args.out, time.perf_counter(), {}
    for name in ["full", *ABLATIONS]:
        output, seconds = train(out, name, args.steps)
        results[name] = measured(out, name, output)
        print(f"{name}: best held-out {results[name]['best']:.4f} ({seconds:.0f} s)", flush=True)
    text = table(results)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(out, "measured.json"), "w") as f:
        json.dump(results, f, indent=1)
    compared = microgpt("compare", *(os.path.join(out, name) for name in results), "--out",
                        os.path.join(out, "compare.html"))
    print(compared.stdout, end="")
    trained = sum(r["elapsed"] or 0 for r in results.values())
    print(f"\n{text}\n\n{len(results)} runs, {trained:.0f} s of training (their logs); this call took "
          f"{time.perf_counter() - started:.0f} s; the budget: {' '.join(budget(args.steps))}")


if __name__ == "__main__":
    main()

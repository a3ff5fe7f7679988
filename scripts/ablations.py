"""What each piece does: the full model and each ablation trained on names at one fixed budget, side by side.

Trains the full model, then the same model without each piece (`train --ablate NAME`), from the same initial weights
and the same batches, each in OUT/<name>; prints the README's table (each run's best held-out loss beside the full
model's, and what to look at in its report, with the numbers it measured); writes OUT/compare.html (`compare`) and
OUT/table.md. A run already finished in OUT is read, not trained again. About 10 minutes on the development machine.

Usage: python scripts/ablations.py [OUT]   (default: ablations/)
"""
import json
import os
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
from microgpt.ablations import ABLATIONS  # noqa: E402
from microgpt.loading import read  # noqa: E402
from microgpt.logs import Log, mean_dead  # noqa: E402

BUDGET = ["--data", "names", "--n-layer", "4", "--n-embd", "64", "--n-head", "4", "--block-size", "16",
          "--batch-size", "32", "--steps", "3000", "--lr", "3e-3", "--schedule", "cosine", "--warmup", "100",
          "--min-lr-ratio", "0.1", "--weight-decay", "0.1", "--grad-clip", "1", "--beta1", "0.9",
          "--init-std", "0.05", "--dtype", "float32", "--engine", "numpy", "--eval-every", "500",
          "--log-every", "100", "--num-samples", "5", "--temperature", "0.8"]
LOOK = {  # what to look at in each run's report, with the numbers this script measured in it
    "full": "the baseline every other row is measured against",
    "rmsnorm": "activation RMS leaving the last layer: {rms:.1f} (full model {full_rms:.1f}); nothing rescales the "
               "stream, so its size is left to the weights",
    "residual": "gradient norm: {grad:.2f} at the end (full model {full_grad:.2f}); every block's gradient must pass "
                "through every block above it",
    "position": "attention maps: without wpe a head cannot tell the letters before it apart by position, only by "
                "what they are",
    "attn-scale": "attention maps: scores sqrt(16) = 4 times larger, so sharper rows; {collapsed} collapse "
                  "warnings (full model {full_collapsed})",
    "attention": "samples: each letter from the one before it alone (plus its position): a bigram model with an MLP",
    "mlp": "the gap between train and held-out loss: {gap:+.3f} (full model {full_gap:+.3f})",
    "relu": "dead ReLUs: none, there is no ReLU; the MLP is one linear map, which attn_wo and lm_head could absorb",
    "causal-mask": "held-out loss far below the full model's, yet the samples: each position learned to read the "
                   "next letter, which sampling does not have",
}


def microgpt(*args):
    """`python -m microgpt ARGS...` from this checkout, its output captured."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "microgpt", *args], capture_output=True, text=True, env=env)


def train(out, name):
    """Train (or finish) the run `name` in OUT/name; return its stdout and how long this call took."""
    run_dir = os.path.join(out, name)
    args = ["--resume", run_dir] if os.path.exists(os.path.join(run_dir, "checkpoint.safetensors")) else \
        [*BUDGET, "--out", run_dir, *([] if name == "full" else ["--ablate", name])]
    started = time.perf_counter()
    result = microgpt("train", *args)
    if result.returncode not in (0, 1):  # (1: the run diverged, which the table says)
        sys.exit(f"{name}: {result.stderr.strip()}")
    return result.stdout + result.stderr, time.perf_counter() - started


def measured(out, name, output):
    """The numbers of run `name` that the table and LOOK use."""
    log, (_, meta, _) = Log(os.path.join(out, name)), read(os.path.join(out, name, "checkpoint.safetensors"))
    last = log.health[-1]["health"]
    samples = [line.split(maxsplit=1)[1] if len(line.split()) > 1 else "(empty)" for line in output.splitlines()
               if line[:3].strip().isdigit() and line[3:5] == "  "][:3]
    return {"best": meta["best_held_out"], "train": log.steps[-1]["train_loss_smooth"], "step": meta["step"],
            "gap": meta["best_held_out"] - log.steps[-1]["train_loss_smooth"], "grad": last["grad_norm"],
            "rms": last["layers"][-1]["activation_rms"], "dead": mean_dead(last["layers"]),
            "collapsed": sum("collapsed" in w for r in log.health for w in r["health"]["warnings"]),
            "elapsed": log.elapsed, "samples": samples, "diverged": "training diverged" in output}


def table(results):
    full = results["full"]
    lines = ["| taken out | best held-out | vs full | train loss (end) | samples | what to look at in its report |",
             "| --- | ---: | ---: | ---: | --- | --- |"]
    for name, r in results.items():
        look = LOOK[name].format(**r, **{f"full_{key}": value for key, value in full.items()})
        best = f"{r['best']:.4f}" + (f" (diverged at step {r['step'] + 1})" if r["diverged"] else "")
        lines.append(f"| {'nothing (the full model)' if name == 'full' else f'`{name}`'} | {best} | "
                     f"{r['best'] - full['best']:+.4f} | {r['train']:.4f} | {', '.join(r['samples'])} | {look} |")
    return "\n".join(lines)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "ablations"
    started, results = time.perf_counter(), {}
    for name in ["full", *ABLATIONS]:
        output, seconds = train(out, name)
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
    print(f"\n{text}\n\n{len(results)} runs in {time.perf_counter() - started:.0f} s; the budget: "
          f"{' '.join(BUDGET)}")


if __name__ == "__main__":
    main()

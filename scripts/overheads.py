"""What the work around a training step costs at nanoGPT's size, engine by engine, measured side by side.

The model is nanoGPT's Shakespeare one (6 layers x 384, 6 heads, block 256; 10.7M parameters) in float32, batch 1,
on the bundled Tiny Shakespeare. For each engine it prints:
  first step   seconds from launching `python -m microgpt train` to its first progress line (the median of 3):
               imports, the data, the initial weights' draw, and one step
  plain step   a step that is neither logged nor evaluated (the median over the run)
  logged step  how much longer a logged step takes (training health: the engine's statistics and a traced pass)
  evaluation   how much longer a step with an evaluation takes than a logged one, beyond the evaluation's own
               forward passes (a held-out part of 4 windows): the checkpoint, and best.safetensors when it improved
Usage: python scripts/overheads.py [ENGINE ...]   (default: numpy and torch, those installed)
"""
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from microgpt import engines
from microgpt.config import RunSettings, TrainConfig
from microgpt.progress import Progress
from microgpt.train import Trainer

MODEL = dict(n_layer=6, n_embd=384, n_head=6, block_size=256)
TRAIN = TrainConfig(steps=1000, lr=1e-3, grad_clip=1.0, init_std=0.02)
LOG_EVERY, EVAL_EVERY, STEPS = 3, 6, 24


def first_step_seconds(engine, runs=3):
    """Seconds from launch to the first progress line of the CLI, the median of `runs` launches."""
    flags = ["--data", "shakespeare", "--engine", engine, "--dtype", "float32", "--init-std", "0.02", "--steps", "5",
             "--num-samples", "0", *(f"--{key.replace('_', '-')}={value}" for key, value in MODEL.items())]
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            process = subprocess.Popen([sys.executable, "-m", "microgpt", "train", *flags, "--out", f"{out}/run"],
                                       stdout=subprocess.PIPE, text=True, cwd=out,
                                       env=dict(os.environ, PYTHONPATH=sys.path[0]))
            for line in process.stdout:
                if line.startswith("step 1/"):
                    times.append(time.perf_counter() - started)
                    break
            process.kill()
            process.wait()
    return statistics.median(times)


def step_seconds(engine):
    """Medians of (plain step, logged step, logged and evaluated step, the evaluation's forward passes)."""
    settings = RunSettings(data="shakespeare", model=MODEL, train=TRAIN, dtype="float32", engine=engine,
                           eval_every=EVAL_EVERY, eval_windows=4, log_every=LOG_EVERY)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(settings, out, stream=io.StringIO())
        progress = Progress(TRAIN.steps, io.StringIO(), LOG_EVERY)
        kinds, forward_passes = {"plain": [], "logged": [], "evaluated": []}, []
        for _ in range(STEPS):
            started = time.perf_counter()
            trainer.train_step(progress)
            seconds = time.perf_counter() - started
            step = trainer.step
            if step > 1:  # the first step warms caches up
                kinds["evaluated" if step % EVAL_EVERY == 0 else "logged" if step % LOG_EVERY == 0 else "plain"] \
                    .append(seconds)
            if step % EVAL_EVERY == 0:
                started = time.perf_counter()
                trainer.held_out_loss()
                forward_passes.append(time.perf_counter() - started)
    return (*(statistics.median(kinds[kind]) for kind in ("plain", "logged", "evaluated")),
            statistics.median(forward_passes))


def main(names):
    print(f"nanoGPT's size: {MODEL}, float32, batch 1, Tiny Shakespeare; {os.cpu_count()} cores")
    print(f"{'engine':<8}{'first step':>12}{'plain step':>12}{'logged step':>13}{'evaluation':>12}"
          "   (its forward passes)")
    for name in names:
        first = first_step_seconds(name)
        plain, logged, evaluated, forward = step_seconds(name)
        print(f"{name:<8}{first:>10.2f} s{plain:>10.3f} s{logged - plain:>+11.3f} s"
              f"{evaluated - logged - forward:>+10.3f} s   ({forward:.3f} s)")


if __name__ == "__main__":
    main(sys.argv[1:] or [name for name in ("numpy", "torch") if name in engines.installed()])

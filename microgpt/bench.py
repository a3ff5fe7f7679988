"""`python -m microgpt bench`: every installed engine trained side by side on the same documents.

Rounds are interleaved (scalar, python, numpy, scalar, python, ...) so that a machine that slows down
for a while slows every engine alike, and each engine's figure is its median over the rounds. In a
round every engine trains on the same documents of the reference run; a fast engine repeats them until
`min_time` seconds have passed, so that its timer reads something. If `pypy3` is on PATH, the python
engine also runs there, in a worker process that takes its turn in each round (after a warm-up, so the
figure is the JIT's steady state). Ratios are to the scalar engine: the atomic file on CPython.
"""
import gc
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time

from microgpt import atomic, engines
from microgpt.config import REFERENCE_MODEL
from microgpt.datasets import Dataset
from microgpt.initialisation import reference_weights
from microgpt.layout import param_count
from microgpt.progress import three_figures

CONFIGS = {  # name -> (model, documents per round)
    "reference": (REFERENCE_MODEL, 3),
    "wide": (dict(n_layer=2, n_embd=64, n_head=4, block_size=16), 1),
}
PYPY_WARMUP_SECONDS = 3.0


def reference_docs():
    """The training names in the reference run's order, as token lists [BOS, ..., BOS], and the vocab size."""
    data = Dataset("names", None, random.Random(42))
    return data.train, data.tokenizer.vocab_size


class Runner:
    """One engine in this process, trained step by step across rounds."""

    def __init__(self, name, cfg):
        self.name, self.label = name, name
        self.engine = engines.create(name, cfg, reference_weights(cfg, random.Random(0)))
        self.step = 0

    def run(self, docs, min_time):
        """Train on `docs` (one per step), again and again until min_time has passed: (seconds, steps)."""
        steps, started = 0, time.perf_counter()
        while True:
            for doc in docs:
                self.engine.loss_and_grads([doc])
                self.engine.adam_step(self.step, lr_t=0.01 * 0.5)  # any positive rate: speed is the same
                self.step += 1
                steps += 1
            elapsed = time.perf_counter() - started
            if elapsed >= min_time:
                return elapsed, steps

    def describe(self):
        return self.engine.describe()


class PyPyRunner:
    """The python engine in a pypy3 worker process (see worker()), driven one round at a time."""

    def __init__(self, pypy, config_name, docs):
        self.name, self.label = "python", "python (PyPy)"
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.process = subprocess.Popen(
            [pypy, "-c", "from microgpt.bench import worker; worker()"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=root))
        self.version = self._ask({"config": config_name})["version"]
        self._ask({"docs": docs, "min_time": PYPY_WARMUP_SECONDS})  # let the JIT compile the hot loops

    def _ask(self, request):
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def run(self, docs, min_time):
        reply = self._ask({"docs": docs, "min_time": min_time})
        return reply["seconds"], reply["steps"]

    def describe(self):
        return f"{self.version}, float64"

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def worker():
    """The loop of a PyPy worker: a config, then rounds of documents, as JSON lines on stdin/stdout."""
    runner = None
    for line in sys.stdin:
        request = json.loads(line)
        if "config" in request:
            _, vocab_size = reference_docs()
            cfg = atomic.GPTConfig(vocab_size=vocab_size, **CONFIGS[request["config"]][0])
            runner = Runner("python", cfg)
            reply = {"version": f"PyPy {'.'.join(map(str, sys.pypy_version_info[:3]))}"}
        else:
            seconds, steps = runner.run(request["docs"], request["min_time"])
            reply = {"seconds": seconds, "steps": steps}
        print(json.dumps(reply), flush=True)


def machine():
    """One line naming the machine and the software the figures were measured with."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    software = f"{platform.python_implementation()} {platform.python_version()}"
    if "numpy" in engines.installed():
        import numpy

        software += f", NumPy {numpy.__version__}"
    if "torch" in engines.installed():
        import torch

        software += f", PyTorch {torch.__version__}"
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}; {software}"


def bench(config_names, rounds, min_time, use_pypy=True, stream=sys.stdout):
    """Measure, print a table per config, and return {config: {engine label: median seconds/step}}."""
    docs, vocab_size = reference_docs()
    pypy = shutil.which("pypy3") if use_pypy else None
    stream.write(f"machine: {machine()}\n")
    stream.write(f"method: {rounds} interleaved rounds, median; each round trains every engine on the same "
                 "documents of the reference run, batch size 1\n")
    results = {}
    for config_name in config_names:
        model, per_round = CONFIGS[config_name]
        cfg = atomic.GPTConfig(vocab_size=vocab_size, **model)
        runners = [Runner(name, cfg) for name in engines.installed()]
        pypy_runner = PyPyRunner(pypy, config_name, docs[:per_round]) if pypy else None
        if pypy_runner:
            runners.insert(2, pypy_runner)  # after CPython's python engine
        # Move everything alive now (the engines, and whatever torch and numpy import) out of the garbage
        # collector's sight: a full collection walks every tracked object, so the scalar engine, which makes
        # garbage by the million, would otherwise run slower merely because torch is loaded.
        gc.collect()
        gc.freeze()
        seconds_per_step = {runner.label: [] for runner in runners}
        tokens_per_step = {}
        for r in range(rounds):
            round_docs = docs[r * per_round:(r + 1) * per_round]
            tokens = engines.predicted_tokens(round_docs, cfg.block_size)
            for runner in runners:
                seconds, steps = runner.run(round_docs, min_time)
                seconds_per_step[runner.label].append(seconds / steps)
                tokens_per_step.setdefault(runner.label, []).append(tokens / len(round_docs))
        if pypy_runner:
            pypy_runner.close()
        gc.unfreeze()
        medians = {label: statistics.median(times) for label, times in seconds_per_step.items()}
        results[config_name] = medians
        stream.write(f"\n{config_name}: n_layer {cfg.n_layer}, n_embd {cfg.n_embd}, n_head {cfg.n_head}, "
                     f"block_size {cfg.block_size} ({param_count(cfg):,} parameters)"
                     + (f"; PyPy is {pypy_runner.version}" if pypy_runner else "") + "\n")
        stream.write(f"{'engine':<16}{'ms/step':>10}{'steps/s':>10}{'tokens/s':>11}{'vs scalar':>11}\n")
        scalar = medians.get("scalar")
        for label, seconds in medians.items():
            tokens = statistics.mean(tokens_per_step[label]) / seconds
            ratio = f"{scalar / seconds:,.0f}x" if scalar else "-"
            stream.write(f"{label:<16}{three_figures(seconds * 1e3):>10}{three_figures(1 / seconds):>10}"
                         f"{tokens:>11,.0f}{ratio:>11}\n")
        stream.write("(" + "; ".join(f"{runner.label}: {runner.describe()}" for runner in runners) + ")\n")
    return results


def bench_command(args):
    bench(args.config or list(CONFIGS), args.rounds, args.min_time, use_pypy=not args.no_pypy)

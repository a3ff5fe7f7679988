"""Engines: the same model, loss, gradients and Adam step, computed at different speeds.

Each engine is one file with a class Engine that keeps the interface of microgpt/engines/base.py; this file lists
them, says which are installed and which is fastest here, and creates one. All start from the same weights
(initialisation.reference_weights) and compute the same numbers, to rounding: tests/test_engines.py holds each to
the scalar reference, the atomic file itself.
"""
import importlib
import importlib.util
import os

from microgpt.errors import UserError

ENGINES = ("scalar", "python", "numpy", "torch")  # slowest first (on a CPU)
NEEDS = {"numpy": ("numpy",), "torch": ("torch", "numpy")}  # engine -> the optional packages it needs


def predicted_tokens(batch, block_size):
    """How many next tokens a batch of token lists predicts: each list cut to block_size + 1 tokens."""
    return sum(min(block_size, len(seq) - 1) for seq in batch)


def installed():
    """The engines whose dependencies are importable here, slowest first."""
    return [name for name in ENGINES if all(importlib.util.find_spec(package) for package in NEEDS.get(name, ()))]


def fastest():
    """torch on a GPU; on a CPU numpy, which beats torch at these sizes; else plain Python."""
    names = installed()
    if "torch" in names:
        import torch

        if torch.cuda.is_available():
            return "torch"
    return "numpy" if "numpy" in names else "python"


def dtypes(name):
    """The dtypes engine `name` computes in (float64 first)."""
    return importlib.import_module(f"microgpt.engines.{name}").Engine.dtypes if name in installed() else ("float64",)


def launched_processes():
    """How many processes torchrun started for this run (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def create(name, cfg, weights, dtype="float64", ablations=(), **options):
    """An engine `name` holding a copy of `weights` (a flat array (P,) in the reference order), computing in
    `dtype`: float64 everywhere, float32 (and bfloat16) where an engine offers it; the model without the pieces
    named in `ablations` (microgpt/ablations.py). `options` (device, attention, compile) are the torch engine's."""
    if name not in ENGINES:
        raise UserError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}")
    missing = [package for package in NEEDS.get(name, ()) if not importlib.util.find_spec(package)]
    if missing:
        raise UserError(f"the {name} engine needs {' and '.join(missing)}: pip install {' '.join(missing)}")
    if launched_processes() > 1 and name != "torch":
        raise UserError(f"started by torchrun with {launched_processes()} processes, but only the torch engine "
                        "trains on several; add --engine torch")
    options = {key: value for key, value in options.items() if value}
    if options and name != "torch":
        raise UserError(f"--{next(iter(options))} is an option of the torch engine; add --engine torch")
    if ablations and name == "scalar":
        raise UserError(f"the scalar engine is the atomic file, which has every piece and no switches; a model "
                        f"without {', '.join(ablations)} needs --engine python, numpy or torch")
    module = importlib.import_module(f"microgpt.engines.{name}")
    if dtype not in module.Engine.dtypes:
        raise UserError(f"the {name} engine does not compute in {dtype}; use --dtype float64, or --engine "
                        f"{'numpy or torch' if dtype == 'float32' else 'torch'}")
    return module.Engine(cfg, weights, dtype, ablations, **options)

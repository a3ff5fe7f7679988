"""Engines: the same model, loss, gradients and Adam step, computed at different speeds.

Every engine is one file with a class `Engine(cfg, weights, dtype="float64", ...)`, its `dtypes`, and the
same calls:
  state_dict(), grad_dict()   weights and last gradients as {name: list of rows of floats}
  new_cache(), forward(tokens, cache) -> logits (T, V) as lists, continuing after the cached positions
  loss(batch), loss_and_grads(batch) -> the mean loss over every predicted token of a batch of token
                              lists (the second also fills the gradients)
  clip_grads(max_norm) -> the global gradient norm before clipping
  adam_step(step, lr_t, beta1, beta2, eps, weight_decay)   one AdamW update, in the reference's order
  export_state(), load_state(state)   weights and Adam's moments as {name: flat floats} (checkpoints)
All start from the same weights (atomic.init_weights) and compute the same numbers, to rounding:
tests/test_engines.py holds each to the scalar reference."""
import importlib
import importlib.util

from microgpt.errors import UserError

ENGINES = ("scalar", "python", "numpy", "torch")  # slowest first (on a CPU)
NEEDS = {"numpy": "numpy", "torch": "torch"}  # engine -> the optional package it needs


def predicted_tokens(batch, block_size):
    """How many next tokens a batch of token lists predicts: each list cut to block_size + 1 tokens."""
    return sum(min(block_size, len(seq) - 1) for seq in batch)


def installed():
    """The engines whose dependencies are importable here, slowest first."""
    return [name for name in ENGINES if name not in NEEDS or importlib.util.find_spec(NEEDS[name])]


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


def create(name, cfg, weights, dtype="float64", **options):
    """An engine `name` holding a copy of `weights` ({name: rows of floats}, e.g. atomic.init_weights),
    computing in `dtype`: float64 everywhere, float32 (and bfloat16) where an engine offers it. `options`
    (device, attention, compile) are the torch engine's."""
    if name not in ENGINES:
        raise UserError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}")
    if name not in installed():
        raise UserError(f"the {name} engine needs the {NEEDS[name]} package: pip install {NEEDS[name]}")
    options = {key: value for key, value in options.items() if value}
    if options and name != "torch":
        raise UserError(f"--{next(iter(options))} is an option of the torch engine; add --engine torch")
    module = importlib.import_module(f"microgpt.engines.{name}")
    if dtype not in module.Engine.dtypes:
        raise UserError(f"the {name} engine does not compute in {dtype}; use --dtype float64, or --engine "
                        f"{'numpy or torch' if dtype == 'float32' else 'torch'}")
    return module.Engine(cfg, weights, dtype, **options)

"""Ablations: the model with a piece taken out, to see what that piece is for.

`train --ablate NAME[,NAME...]` trains the reference's model without the pieces named. The python, numpy and torch
engines each express every ablation, and compute the same numbers under it (tests/test_ablations.py holds numpy and
torch to the python engine at 1e-12 in float64, and the python engine's gradients to finite differences); the scalar
engine is the atomic file, which has every piece and no switches. The weights stay the reference's, all of them,
drawn alike: a piece taken out leaves its weights unused (their gradient is 0, so Adam never moves them; weight
decay alone shrinks them), so an ablated run starts exactly where the full model does and differs from it by the
piece alone. A checkpoint records its ablations, and every command that opens it builds the same model.
"""
import argparse
from typing import NamedTuple

ABLATIONS = {  # name: what taking it out does (one line of `train --help` each)
    "rmsnorm": "every rmsnorm becomes the identity",
    "residual": "each block's output replaces the stream",
    "position": "no position embedding",
    "attn-scale": "scores not divided by sqrt(head_dim)",
    "attention": "the attention blocks removed",
    "mlp": "the MLP blocks removed",
    "relu": "the MLP without its non-linearity",
    "causal-mask": "positions see the future: the loss cheats",
}
INSIDE = {"attn-scale": "attention", "causal-mask": "attention", "relu": "mlp"}  # a change to a block, by block
NONE = "none"  # what --ablate takes, and the messages say, for no ablation


class Pieces(NamedTuple):
    """Which pieces a model has, by the ablations' names with _ for -: all of them, bar the ablated."""
    rmsnorm: bool = True
    residual: bool = True
    position: bool = True
    attn_scale: bool = True
    attention: bool = True
    mlp: bool = True
    relu: bool = True
    causal_mask: bool = True


def pieces(ablations):
    """The Pieces of a model trained with `ablations` (names of ABLATIONS)."""
    return Pieces(**{name.replace("-", "_"): name not in ablations for name in ABLATIONS})


def problem(names):
    """What is wrong with a list of ablation names (unknown, repeated, out of order, or a change to a block that
    another takes out); None when nothing is."""
    for name in names:
        if name not in ABLATIONS:
            return f"unknown ablation {name!r}; choose from {{{','.join(ABLATIONS)}}}"
    if list(names) != [name for name in ABLATIONS if name in names]:
        return "the ablations are repeated or not in the order of --help"
    for name in names:
        if INSIDE.get(name) in names:
            return f"{name} changes the {INSIDE[name]} blocks, which {INSIDE[name]} removes; choose one of the two"
    if {"residual", "attention", "mlp"} <= set(names):
        return "residual changes how the blocks join the stream, and attention and mlp remove them all; drop one"
    return None


def parse(text):
    """An argparse type: 'mlp,rmsnorm' -> ('rmsnorm', 'mlp'), in the order of ABLATIONS; 'none' -> ()."""
    given = [name.strip() for name in text.split(",") if name.strip() not in ("", NONE)]
    names = tuple(name for name in ABLATIONS if name in given)
    found = problem([name for name in given if name not in ABLATIONS] or names)
    if found:
        raise argparse.ArgumentTypeError(found)
    return names


def listed(ablations):
    """'attention,relu', or 'none': the ablations as --ablate takes them."""
    return ",".join(ablations) or NONE


def describe(ablations):
    """For a run's header: 'the full model', or 'without rmsnorm, mlp'."""
    return f"without {', '.join(ablations)}" if ablations else "the full model"

"""Where every number of a model lives: one flat array per kind, the same layout in every engine and checkpoint.

The weights are atomic.param_shapes' matrices in the reference order (wte, wpe, lm_head, then layer by layer
attn_wq, attn_wk, attn_wv, attn_wo, mlp_fc1, mlp_fc2), each row by row, laid end to end: one flat array (P,).
Their gradients and Adam's two moments are flat arrays (P,) in the same order. That is what crosses the engine
boundary (engines/base.py), and a checkpoint holds the three as tensors under the weights' GPT-2 names, the
moments prefixed "adam.m." and "adam.v.". This file is the one place that knows it.
"""
from array import array

from microgpt.atomic import param_shapes

KINDS = ("", "adam.m.", "adam.v.")  # checkpoint name prefixes of the weights, Adam's first and second moments


def param_count(cfg):
    """P, the number of weights of a model."""
    return sum(rows * cols for rows, cols in param_shapes(cfg).values())


def segments(cfg):
    """{name: (start, (rows, cols))}: where each weight matrix starts in a flat (P,) array, and its shape."""
    found, start = {}, 0
    for name, (rows, cols) in param_shapes(cfg).items():
        found[name], start = (start, (rows, cols)), start + rows * cols
    return found


def split(flat, cfg):
    """{name: ((rows, cols), part)}: each weight matrix's part of a flat array (P,), a slice of it (a view of it for
    NumPy and torch)."""
    return {name: ((rows, cols), flat[start:start + rows * cols]) for name, (start, (rows, cols)) in
            segments(cfg).items()}


def stacked_qkv(flat, cfg, layer):
    """The part of a flat array (P,) that holds attn_wq, attn_wk and attn_wv of a layer, which follow one another:
    the three (C, C) matrices stacked, (3C, C) once reshaped."""
    start = segments(cfg)[f"layer{layer}.attn_wq"][0]
    return flat[start:start + 3 * cfg.n_embd * cfg.n_embd]


def checkpoint_tensors(cfg, weights, m, v):
    """The tensors of a checkpoint, {name: (shape, flat part)}, from the three flat arrays (P,): views of the
    engine's own arrays where it has them, so that a checkpoint is written from their bytes."""
    return {prefix + name: tensor for prefix, flat in zip(KINDS, (weights, m, v))
            for name, tensor in split(flat, cfg).items()}


def state_from_checkpoint(tensors, cfg):
    """(weights, m, v), three flat arrays (P,), from the tensors of a checkpoint that holds this model's (checked by
    microgpt/metadata.py when it was read)."""
    flats = []
    for prefix in KINDS:
        parts = [tensors[prefix + name][1] for name in segments(cfg)]
        flat = array("f" if all(part.typecode == "f" for part in parts) else "d")  # as saved: F32, or F64
        for part in parts:
            flat.extend(part if part.typecode == flat.typecode else array(flat.typecode, part))
        flats.append(flat)
    return tuple(flats)

"""Opening a trained model: a run directory or a checkpoint file becomes an engine holding its weights,
with its tokenizer and settings. Used by every command that looks at a trained model."""
import os

from microgpt import atomic, checkpoint, engines
from microgpt.errors import UserError
from microgpt.tokenizer import from_metadata


def checkpoint_path(source, which="best"):
    """The file to open for `source`: itself if a file; in a run directory best.safetensors (or, with
    which="last" or no best yet, checkpoint.safetensors)."""
    if not os.path.isdir(source):
        return source
    best = os.path.join(source, "best.safetensors")
    return best if which == "best" and os.path.exists(best) else os.path.join(source, "checkpoint.safetensors")


REQUIRED = ("settings", "vocab_size", "tokenizer", "data_format", "data_sha256", "step", "best_held_out", "smoothed",
            "rng", "eval_every", "engine", "engine_options")


def read(path):
    """(tensors, metadata) of a checkpoint that train wrote; one-line errors for anything else."""
    tensors, meta = checkpoint.load(path)
    missing = [key for key in REQUIRED if key not in meta]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}: it was not written by microgpt train; use one that was")
    return tensors, meta


def check_shapes(tensors, cfg, path):
    """Refuse a checkpoint whose tensors are not the ones its settings describe."""
    for name, shape in atomic.param_shapes(cfg).items():
        for key in (name, f"adam.m.{name}", f"adam.v.{name}"):
            if key not in tensors or tuple(tensors[key][0]) != shape:
                found = tensors[key][0] if key in tensors else "nothing"
                raise UserError(f"{path} is for another model: its settings want {key} of shape {shape}, "
                                f"it holds {found}; use the checkpoint that train wrote for this run")


def open_model(source, engine_name=None, which="best"):
    """(engine, tokenizer, metadata, path) of the model saved at `source`."""
    path = checkpoint_path(source, which)
    tensors, meta = read(path)
    cfg = atomic.GPTConfig(vocab_size=meta["vocab_size"], **meta["settings"]["model"])
    check_shapes(tensors, cfg, path)
    weights = {name: [list(tensors[name][1][r * cols:(r + 1) * cols]) for r in range(rows)]
               for name, (rows, cols) in atomic.param_shapes(cfg).items()}
    name = engine_name or engines.fastest()
    # the run's dtype where this engine has it (float32 on numpy), else float64, which every engine has
    dtype = meta["settings"]["dtype"] if meta["settings"]["dtype"] in engines.dtypes(name) else "float64"
    return engines.create(name, cfg, weights, dtype), from_metadata(meta["tokenizer"]), meta, path

"""Opening a trained model: a run directory or a checkpoint file becomes an engine holding its weights, with its
tokenizer and settings. Used by every command that looks at a trained model."""
import os

from microgpt import checkpoint, engines
from microgpt.layout import state_from_checkpoint
from microgpt.metadata import validate
from microgpt.tokenizer import from_metadata


def checkpoint_path(source, which="best"):
    """The file to open for `source`: itself if a file; in a run directory best.safetensors (or, with which="last"
    or no best yet, checkpoint.safetensors)."""
    if not os.path.isdir(source):
        return source
    best = os.path.join(source, "best.safetensors")
    return best if which == "best" and os.path.exists(best) else os.path.join(source, "checkpoint.safetensors")


def read(path):
    """(tensors, metadata, the model's GPTConfig) of a checkpoint that train wrote, every byte and field of it checked
    (microgpt/checkpoint.py, microgpt/metadata.py); one-line errors for anything else."""
    tensors, meta = checkpoint.load(path)
    return tensors, meta, validate(tensors, meta, path)


def open_model(source, engine_name=None, which="best"):
    """(engine, tokenizer, metadata, path) of the model saved at `source`."""
    path = checkpoint_path(source, which)
    tensors, meta, cfg = read(path)
    weights, _, _ = state_from_checkpoint(tensors, cfg)
    name = engine_name or engines.fastest()
    # the run's dtype where this engine has it (float32 on numpy), else float64, which every engine has
    dtype = meta["settings"]["dtype"] if meta["settings"]["dtype"] in engines.dtypes(name) else "float64"
    engine = engines.create(name, cfg, weights, dtype, ablations=meta["settings"]["ablate"])
    return engine, from_metadata(meta["tokenizer"]), meta, path

"""What a run's checkpoint holds besides its tensors, field by field, and the one check that every reader of a
checkpoint goes through (microgpt/loading.py): every field present and of its type, nothing unknown, the fields
consistent with one another, and exactly the tensors that the settings imply, each of its shape. Nothing is ever
filled in with a default: a checkpoint that lacks model.n_head is refused, not read as a model with 4 heads.

A schema is a dict (a JSON object with exactly these keys, each checked by its own schema), or a leaf: a pair
(test, what it should be), the second said in the error.
"""
import copy
import math
import random
import reprlib
import string
from dataclasses import fields

from microgpt import ablations, atomic
from microgpt.checkpoint import VERSION, is_whole
from microgpt.config import ATTENTIONS, DEVICES, DTYPES, MODEL_FIELDS, TrainConfig
from microgpt.datasets import FORMATS
from microgpt.engines import ENGINES
from microgpt.errors import UserError
from microgpt.layout import KINDS, segments
from microgpt.schedule import SCHEDULES


def whole(low=None):
    return (lambda x: is_whole(x) and (low is None or x >= low),
            "a whole number" + (f" >= {low}" if low is not None else ""))


def one_of(*choices):
    return (lambda x: isinstance(x, (str, int, type(None))) and not isinstance(x, bool) and x in choices,
            f"one of {', '.join(map(repr, choices))}")


def number(allow_inf=False):  # JSON writes inf as Infinity, which is how a run with no evaluation yet saves its best
    return (lambda x: (is_whole(x) and abs(x) <= 2**53)  # (exact as a float)
            or (isinstance(x, float) and (math.isfinite(x) or (allow_inf and x == math.inf))), "a number")


def optional(leaf):
    test, what = leaf
    return lambda x: x is None or test(x), f"{what} or null"


def list_of(leaf, length=None):
    test, what = leaf
    return (lambda x: isinstance(x, list) and (length is None or len(x) == length) and all(map(test, x)),
            f"a list of {what}" if length is None else f"a list of {length} × {what}")


def takes_state(rng):
    """Whether random.setstate takes this state, after its trip through JSON: [3, [625 whole numbers], null or a
    number], lists for tuples."""
    if not (isinstance(rng, list) and len(rng) == 3 and isinstance(rng[1], list)
            and all(isinstance(x, int) for x in rng[1]) and (rng[2] is None or isinstance(rng[2], float))):
        return False
    try:
        random.Random().setstate(to_state(rng))
    except (TypeError, ValueError, OverflowError, IndexError):
        return False
    return True


def to_state(value):
    """random.getstate() after a trip through JSON (lists back to tuples)."""
    return tuple(to_state(v) for v in value) if isinstance(value, list) else value


TEXT = (lambda x: isinstance(x, str), "text")
FLAG = (lambda x: isinstance(x, bool), "true or false")
SHA256 = (lambda x: isinstance(x, str) and len(x) == 64 and set(x) <= set(string.hexdigits.lower()),
          "64 hex digits")
BY_TYPE = {int: whole(), float: number(), str: TEXT}  # a TrainConfig field's schema, from its annotation
TRAIN = {f.name: BY_TYPE[f.type] for f in fields(TrainConfig)} | {
    "steps": whole(1), "batch_size": whole(1), "warmup": whole(0), "schedule": one_of(*SCHEDULES),
    "dropout": (lambda x: number()[0](x) and 0 <= x < 1, "a number in [0, 1)")}
TOKENIZERS = {  # the tokenizer's own fields, by its "type"
    "char": {"type": TEXT, "chars": TEXT},
    "bpe": {"type": TEXT, "presplit": FLAG, "merges": list_of(list_of(whole(0), length=2))},
}
SCHEMA = {
    "version": one_of(*range(1, VERSION + 1)),
    "settings": {"data": TEXT, "format": one_of(*FORMATS, None),
                 "model": {name: whole(1) for name in MODEL_FIELDS}, "train": TRAIN,
                 "dtype": one_of(*DTYPES), "tokenizer": one_of(*TOKENIZERS),
                 "vocab_size": whole(1), "presplit": FLAG,
                 "ablate": (lambda x: isinstance(x, list) and all(isinstance(name, str) for name in x)
                            and ablations.problem(x) is None, "a list of ablations in the order of train --help")},
    "vocab_size": whole(2),
    "tokenizer": (lambda x: isinstance(x, dict) and one_of(*TOKENIZERS)[0](x.get("type")),
                  f"a tokenizer ({' or '.join(TOKENIZERS)})"),  # and the fields of its type (validate)
    "data_sha256": SHA256, "data_format": one_of(*FORMATS),
    "step": whole(0), "best_held_out": number(allow_inf=True), "smoothed": optional(number()),
    "rng": (takes_state, "a random generator's state"),
    "eval_every": whole(1), "engine": one_of(*ENGINES),
    "engine_options": {"device": one_of(*DEVICES, None), "attention": one_of(*ATTENTIONS, None), "compile": FLAG},
    "evaluation_due": FLAG, "elapsed": optional(number()),  # seconds the run has taken (None: not kept, version < 3)
}

NEW_FIELDS = {  # format version -> the fields it introduced, each with the value a file of an earlier version implies
    2: {"evaluation_due": False},  # version 1 never cut an evaluation short
    3: {"settings.ablate": [], "elapsed": None},  # version 2 had no ablations and kept no time
    4: {"settings.train.dropout": 0.0},  # version 3 had no dropout
}


def upgrade(meta, version):
    """Brings the metadata of a file of format `version - 1` up to `version`: its new fields, with the values they
    imply. Returns the name of one already there (no version wrote it there: the file is damaged, and the field is
    refused, never overwritten), else None."""
    for name, value in NEW_FIELDS[version].items():
        *parents, field = name.split(".")
        holder = meta
        for parent in parents:
            holder = holder.get(parent) if isinstance(holder, dict) else None
        if isinstance(holder, dict):  # (else the schema's check says what is wrong)
            if field in holder:
                return name
            holder[field] = copy.deepcopy(value)  # (not the table's own list, which a reader could change)
    meta["version"] = version
    return None


def validate(tensors, meta, path):
    """The model's GPTConfig, once the checkpoint at `path` ({name: (shape, values)}, {key: value}) is known to hold
    exactly what train writes; else a one-line error that names the first field or tensor that is wrong. A checkpoint
    of an older format version is brought up to this one first, in `meta`."""
    declared = meta["version"]  # (checkpoint.load made it a whole number >= 1)
    for version in range(declared + 1, VERSION + 1):
        stray = upgrade(meta, version)
        if stray:
            raise bad(path, f"it holds {stray}, which its format version {declared} did not have")
    check(meta, SCHEMA, path, "")
    check(meta["tokenizer"], TOKENIZERS[meta["tokenizer"]["type"]], path, "tokenizer.")
    cfg = atomic.GPTConfig(vocab_size=meta["vocab_size"], **meta["settings"]["model"])
    problem = inconsistency(meta, cfg)
    if problem:
        raise bad(path, problem)
    if cfg.n_layer > len(tensors):  # (each layer has tensors: a huge n_layer is refused before its names are listed)
        raise UserError(f"{path} is for another model: its settings want {cfg.n_layer} layers, it holds "
                        f"{len(tensors)} tensors; use the checkpoint that train wrote for this run")
    expected = {prefix + name: shape for prefix in KINDS for name, (_, shape) in segments(cfg).items()}
    for name, shape in expected.items():
        if name not in tensors or tensors[name][0] != shape:
            found = f"of shape {tensors[name][0]}" if name in tensors else "nothing"
            raise UserError(f"{path} is for another model: its settings want {name} of shape {shape}, it holds "
                            f"{found}; use the checkpoint that train wrote for this run")
    unknown = sorted(set(tensors) - set(expected))
    if unknown:
        raise bad(path, f"it holds a tensor {unknown[0]} that its model does not have")
    for name, (_, values) in tensors.items():  # a NaN or an infinity makes the sum one (weights are never near 1e308)
        if not math.isfinite(sum(values)):
            raise bad(path, f"tensor {name} holds a value that is not finite (NaN or infinity)")
    return cfg


def check(value, schema, path, where):
    """`value` against `schema`, `where` naming it in the error ("settings.model." for the fields of a model)."""
    if not isinstance(value, dict):
        raise bad(path, f"{where.rstrip('.') or 'its metadata'} is not a JSON object")
    for key, part in schema.items():
        if key not in value:
            raise bad(path, f"its metadata field {where}{key} is missing")
        if isinstance(part, dict):
            check(value[key], part, path, f"{where}{key}.")
        elif not part[0](value[key]):
            raise bad(path, f"its metadata field {where}{key} is {reprlib.repr(value[key])}, not {part[1]}")
    unknown = sorted(set(value) - set(schema))
    if unknown:
        raise bad(path, f"it has an unknown metadata field {where}{unknown[0]}")


def inconsistency(meta, cfg):
    """What in a checkpoint's metadata (each field of its type) contradicts the rest; None when nothing does."""
    tokenizer, settings = meta["tokenizer"], meta["settings"]
    if cfg.n_embd % cfg.n_head:
        return "settings.model: n_embd is not a multiple of n_head"
    if tokenizer["type"] != settings["tokenizer"]:
        return "tokenizer.type is not settings.tokenizer"
    if tokenizer["type"] == "char":
        if len(set(tokenizer["chars"])) != len(tokenizer["chars"]):
            return "tokenizer.chars holds a character twice"
        size = len(tokenizer["chars"]) + 1
    else:  # BPE: the merge of rank r makes id 256 + r, from ids made before it
        if any(max(pair) >= 256 + rank for rank, pair in enumerate(tokenizer["merges"])):
            return "tokenizer.merges joins an id before it exists"
        if tokenizer["presplit"] != settings["presplit"]:
            return "tokenizer.presplit is not settings.presplit"
        size = 256 + len(tokenizer["merges"]) + 1
    if size != cfg.vocab_size:
        return f"vocab_size is {cfg.vocab_size}, its tokenizer's {size}"
    if settings["format"] not in (None, meta["data_format"]):
        return "settings.format is not data_format"
    if meta["step"] > settings["train"]["steps"]:
        return "step is past settings.train.steps"
    return None


def bad(path, what):
    return UserError(f"{path} is damaged or was not written by microgpt train: {what}; use a checkpoint that train "
                     "wrote")

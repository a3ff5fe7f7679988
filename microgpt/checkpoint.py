"""Checkpoints: one .safetensors file per save, written and read with the standard library.

The layout is the public safetensors one, so the `safetensors` package, PyTorch users and any other
reader open it: 8 bytes (little-endian u64) giving the length of a JSON header, the header, then the raw
little-endian tensors one after another. The header maps each tensor's name to its dtype, shape and
byte range, and its "__metadata__" (strings only) carries everything else a run needs to continue
exactly: the format version, the model and training settings, the tokenizer, the data, the step and the
random state. Tensors: the weights under GPT-2's names (wte, wpe, lm_head, layer0.attn_wq, ...) and
Adam's moments as adam.m.<name> and adam.v.<name>. A save goes to a temporary file that then replaces
the old one, so a crash or a full disk never leaves a half-written checkpoint behind. Never pickle.
"""
import json
import os
import struct
import sys
from array import array

from microgpt.errors import UserError

FORMAT = "microgpt"
VERSION = 1  # the checkpoint format; a reader refuses a newer one
DTYPES = {"F64": ("d", 8), "F32": ("f", 4)}  # safetensors dtype -> array typecode, bytes per item


def to_bytes(values, dtype):
    """A flat sequence of floats (list, array('d'), numpy array) as little-endian bytes of `dtype`."""
    if hasattr(values, "astype"):  # numpy: convert without a Python loop
        return values.astype("<f8" if dtype == "F64" else "<f4").tobytes()
    data = array(DTYPES[dtype][0], values)
    if sys.byteorder == "big":
        data.byteswap()
    return data.tobytes()


def from_bytes(raw, dtype):
    data = array(DTYPES[dtype][0])
    data.frombytes(raw)
    if sys.byteorder == "big":
        data.byteswap()
    return data


def save(path, tensors, metadata, dtype="F64"):
    """Write {name: (shape, flat floats)} and {key: JSON-able value} to `path`, atomically."""
    header, offset = {}, 0
    blobs = []
    for name, (shape, values) in tensors.items():
        blob = to_bytes(values, dtype)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    meta = {"format": FORMAT, "version": str(VERSION)}
    meta.update({key: json.dumps(value) for key, value in metadata.items()})
    header["__metadata__"] = meta
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # pad so the tensors start 8-byte aligned, as the format allows
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(encoded)))
            f.write(encoded)
            for blob in blobs:
                f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise UserError(f"cannot write the checkpoint {path}: {e.strerror}; free some space or choose "
                        "another --out (the previous checkpoint, if any, is intact)") from None


def load(path):
    """Read a checkpoint: ({name: (shape, array of floats)}, {key: value}). Refuses, with a one-line
    error, anything that is not a complete microgpt checkpoint of a version this code can read."""
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.safetensors")
    if not os.path.exists(path):
        raise UserError(f"no checkpoint at {path}; give a run directory (--out of train) or a .safetensors file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}; check the path and its permissions") from None
    problem = f"{path} is not a microgpt checkpoint"
    if len(data) < 9 or data[8:9] != b"{":  # every safetensors header is a JSON object
        raise UserError(f"{problem} (no safetensors header); give the file that train wrote")
    (header_len,) = struct.unpack("<Q", data[:8])
    if 8 + header_len > len(data):
        raise UserError(f"{path} is truncated (header cut short); use an intact checkpoint, e.g. best.safetensors")
    try:
        header = json.loads(data[8:8 + header_len])
        meta = header.pop("__metadata__")
        if meta.get("format") != FORMAT:
            raise ValueError
    except (ValueError, KeyError, AttributeError, TypeError):
        raise UserError(f"{problem} (no microgpt header); give the file that train wrote") from None
    if not str(meta.get("version", "")).isdigit():
        raise UserError(f"{problem} (no format version); give the file that train wrote")
    if int(meta["version"]) > VERSION:
        raise UserError(f"{path} has checkpoint format version {meta['version']}, newer than this microgpt "
                        f"reads ({VERSION}); upgrade microgpt")
    body = data[8 + header_len:]
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        if info["dtype"] not in DTYPES:
            raise UserError(f"{path} holds {name} as {info['dtype']}; microgpt reads F64 and F32 checkpoints")
        if end > len(body):
            raise UserError(f"{path} is truncated (tensor {name} cut short); use an intact checkpoint")
        tensors[name] = (tuple(info["shape"]), from_bytes(body[start:end], info["dtype"]))
    metadata = {key: json.loads(value) for key, value in meta.items() if key not in ("format", "version")}
    return tensors, metadata

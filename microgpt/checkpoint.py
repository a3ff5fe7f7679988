"""Checkpoints: one .safetensors file per save, written and read with the standard library.

The layout is the public safetensors one, so the `safetensors` package, PyTorch users and any other
reader open it: 8 bytes (little-endian u64) giving the length of a JSON header, the header, then the raw
little-endian tensors one after another. The header maps each tensor's name to its dtype, shape and
byte range, and its "__metadata__" (strings only) carries everything else a run needs to continue
exactly: the format version, the model and training settings, the tokenizer, the data, the step and the
random state; which tensors a model's checkpoint holds is microgpt/layout.py's to say. A save goes to a
temporary file that then replaces the old one, so a crash or a full disk never leaves a half-written
checkpoint behind. Never pickle.
"""
import contextlib
import json
import os
import shutil
import struct
import sys
from array import array

from microgpt.errors import UserError

FORMAT = "microgpt"
VERSION = 1  # the checkpoint format; a reader refuses a newer one
DTYPES = {"F64": "d", "F32": "f"}  # safetensors dtype -> array typecode (and memoryview format)


def as_buffer(values):
    """(safetensors dtype, little-endian buffer) of a flat sequence of floats: a NumPy array or an array('d') or
    array('f') as it is, without a copy (on a little-endian machine); anything else as float64."""
    try:
        view = memoryview(values)
    except TypeError:
        view = memoryview(array("d", values))
    if view.format not in ("d", "f"):  # e.g. a float16 array
        view = memoryview(array("d", view.tolist()))
    if sys.byteorder == "big":
        swapped = array(view.format, view)
        swapped.byteswap()
        view = memoryview(swapped)
    return ("F64" if view.format == "d" else "F32"), view


def save(path, tensors, metadata):
    """Write {name: (shape, flat floats)} and {key: JSON-able value} to `path`, atomically. Each tensor is stored in
    its own precision (float64, or float32 for float32 arrays), from its bytes."""
    header, offset, buffers = {}, 0, []
    for name, (shape, values) in tensors.items():
        dtype, buffer = as_buffer(values)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + buffer.nbytes]}
        buffers.append(buffer)
        offset += buffer.nbytes
    meta = {"format": FORMAT, "version": str(VERSION)}
    meta.update({key: json.dumps(value) for key, value in metadata.items()})
    header["__metadata__"] = meta
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # pad so the tensors start 8-byte aligned, as the format allows
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for buffer in buffers:
            f.write(buffer)
        f.flush()
        os.fsync(f.fileno())


def duplicate(path, other):
    """Save the checkpoint at `path` under the name `other` too, atomically: a hard link where the file system has
    them (nothing written twice; a later save replaces `path` with a new file, never touching this one), else a
    copy."""
    with replacing(other) as tmp:
        try:
            os.link(path, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(path, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())


@contextlib.contextmanager
def replacing(path):
    """Write to the temporary file this yields, which then replaces `path` in one rename: a crash or a full disk
    never leaves a half-written checkpoint, and on an error the previous one stays as it was."""
    tmp = f"{path}.tmp"
    try:
        if os.path.exists(tmp):
            os.remove(tmp)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise UserError(f"cannot write the checkpoint {path}: {e.strerror}; free some space or choose another --out "
                        "(the previous checkpoint, if any, is intact)") from None


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
    body = memoryview(data)[8 + header_len:]
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        if info["dtype"] not in DTYPES:
            raise UserError(f"{path} holds {name} as {info['dtype']}; microgpt reads F64 and F32 checkpoints")
        if end > len(body):
            raise UserError(f"{path} is truncated (tensor {name} cut short); use an intact checkpoint")
        values = array(DTYPES[info["dtype"]])
        values.frombytes(body[start:end])
        if sys.byteorder == "big":
            values.byteswap()
        tensors[name] = (tuple(info["shape"]), values)
    metadata = {key: json.loads(value) for key, value in meta.items() if key not in ("format", "version")}
    return tensors, metadata

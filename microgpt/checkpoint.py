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
import math
import os
import reprlib
import shutil
import struct
import sys
from array import array

from microgpt.errors import UserError
from microgpt.files import read_bytes

FORMAT = "microgpt"
# the checkpoint format; a reader refuses a newer one (2: evaluation_due; 3: ablations, elapsed; 4: dropout)
VERSION = 4
DTYPES = {"F64": "d", "F32": "f"}  # safetensors dtype -> array typecode (and memoryview format)
ITEMSIZE = {"F64": 8, "F32": 4}  # bytes per value
MAX_HEADER = 100_000_000  # bytes; the safetensors library refuses a longer header too


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
    """Read a checkpoint: ({name: (shape, array of floats)}, {key: value}). Everything is checked before any of it is
    used (checked_header): anything but a complete safetensors file of microgpt's, of a version this code reads, is
    refused with a one-line error."""
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.safetensors")
    if not os.path.exists(path):
        raise UserError(f"no checkpoint at {path}; give a run directory (--out of train) or a .safetensors file")
    data = read_bytes(path, path, "give a run directory (--out of train) or a .safetensors file")
    header, meta, body = checked_header(data, path)
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        values = array(DTYPES[info["dtype"]])
        values.frombytes(body[start:end])
        if sys.byteorder == "big":
            values.byteswap()
        tensors[name] = (tuple(info["shape"]), values)
    return tensors, meta


def checked_header(data, path):
    """(tensor entries, metadata with its JSON values read, the tensors' bytes) of a file's bytes, once the file is
    known to be what save() writes: the 8-byte length, a JSON header of that length, microgpt's metadata, and
    tensors of a dtype we read that tile the rest of the file exactly, each holding prod(shape) values."""
    header_len = struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else 0
    if not 2 <= header_len <= MAX_HEADER or data[8:9] != b"{":  # (text read as a length is a number near 2**60)
        raise UserError(f"{path} is not a safetensors file (no header), so not a microgpt checkpoint; "
                        "give the file that train wrote")
    if 8 + header_len > len(data):
        raise truncated(path, "its header is cut short")
    try:
        header = json.loads(data[8:8 + header_len])
    except (ValueError, RecursionError):  # (UnicodeDecodeError included; and arrays nested thousands deep)
        header = None
    if not isinstance(header, dict):
        raise UserError(f"{path} is not a safetensors file (its header is not a JSON object), so not a microgpt "
                        "checkpoint; give the file that train wrote")
    meta = read_metadata(header.pop("__metadata__", None), path)
    body = memoryview(data)[8 + header_len:]
    end = 0
    for name, info in sorted(header.items(), key=lambda item: offsets_of(item, path)):
        end = check_entry(name, info, end, path)
    if end > len(body):
        raise truncated(path, "its last tensor is cut short")
    if end < len(body):
        raise damaged(path, f"{len(body) - end} bytes follow its last tensor")
    return header, meta, body


def damaged(path, what):
    return UserError(f"{path} is damaged: {what}; use an intact checkpoint, e.g. best.safetensors")


def truncated(path, what):
    return UserError(f"{path} is truncated ({what}); use an intact checkpoint, e.g. best.safetensors")


def offsets_of(item, path):
    """A tensor entry's (start, end), once they are two whole numbers in order."""
    name, info = item
    offsets = info.get("data_offsets") if isinstance(info, dict) else None
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_whole(x) for x in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise damaged(path, f"tensor {name} has no valid data_offsets ({reprlib.repr(offsets)})")
    return tuple(offsets)


def check_entry(name, info, start, path):
    """Where the tensor after this one must start, once this one's entry is sound and starts at `start`."""
    if set(info) != {"dtype", "shape", "data_offsets"}:
        raise damaged(path, f"tensor {name} has the fields {sorted(info)}, not dtype, shape and data_offsets")
    dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
    if not (isinstance(dtype, str) and dtype in DTYPES):
        raise UserError(f"{path} holds {name} as {reprlib.repr(dtype)}; microgpt reads F64 and F32 checkpoints")
    if not (isinstance(shape, list) and all(is_whole(n) and n >= 0 for n in shape)):
        raise damaged(path, f"tensor {name} has the shape {reprlib.repr(shape)}")
    if begin != start:
        raise damaged(path, f"tensor {name} starts at byte {begin}, where the one before it ends at {start}")
    size = math.prod(shape) * ITEMSIZE[dtype]
    if end - begin != size:
        raise damaged(path, f"tensor {name} is {end - begin} bytes, but {len(shape)} dimensions {shape} of "
                            f"{dtype} are {size}")
    return end


def read_metadata(meta, path):
    """The "__metadata__" of a microgpt checkpoint (strings only, as the format wants), each value read back from
    its JSON; the format's name checked and dropped, its version checked and kept (a number)."""
    if not (isinstance(meta, dict) and meta.get("format") == FORMAT
            and all(isinstance(value, str) for value in meta.values())):
        raise UserError(f"{path} is a safetensors file, but not a microgpt checkpoint (no microgpt header); give "
                        "the file that train wrote")
    version = meta.get("version", "")
    if not (version.isascii() and version.isdigit() and int(version) >= 1):
        raise damaged(path, f"its format version is {reprlib.repr(version)}")
    if int(version) > VERSION:
        raise UserError(f"{path} has checkpoint format version {version}, newer than this microgpt reads "
                        f"({VERSION}); upgrade microgpt")
    values = {"version": int(version)}
    for key, value in meta.items():
        if key not in ("format", "version"):
            try:
                values[key] = json.loads(value)
            except (ValueError, RecursionError):
                raise damaged(path, f"its metadata field {key} is not JSON") from None
    return values


def is_whole(x):
    """An int that is not a bool (JSON's true would pass isinstance(x, int))."""
    return isinstance(x, int) and not isinstance(x, bool)

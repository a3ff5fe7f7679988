"""A damaged checkpoint is never used: random corruptions of a real one (header bytes, the header's length, tensor
offsets, dtypes, shapes and names, metadata values, non-finite tensor values, truncation) each make `sample` and
`train --resume` stop with one line and exit code 2, never a traceback, never a loaded model.
(`pytest --hypothesis-show-statistics` counts the kinds tried.)"""
import contextlib
import io
import json
import shutil
import struct
from typing import NamedTuple

import pytest
from conftest import microgpt
from hypothesis import event, given, settings
from hypothesis import strategies as st

from microgpt.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run directory (the reference model, 5 steps), and its checkpoint as (header, metadata values, body)."""
    where = tmp_path_factory.mktemp("trained")
    assert microgpt("train", "--steps", 5, "--out", "run", "--num-samples", 0, cwd=where).returncode == 0
    raw = (where / "run" / "checkpoint.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    return where / "run", raw, header, raw[8 + n:]


def pack(header, body):
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + body


NOT_IN_JSON = [b for b in range(256) if (b < 0x20 and b not in b"\t\n\r") or b >= 0x80]  # anywhere in ASCII JSON
OTHER_VALUES = ["x", True, 7, 0.5, [1], {"k": 1}]  # (never None: some fields may be null)


def category(value):
    """A JSON value's type, with whole and fractional numbers as one (a float field may hold 1)."""
    return "number" if type(value) in (int, float) else type(value).__name__


def nodes(value, path=()):
    """The paths to every value inside a metadata value's JSON objects (lists are leaves)."""
    yield path
    if isinstance(value, dict):
        for key, part in value.items():
            yield from nodes(part, (*path, key))


def at(value, path):
    for key in path:
        value = value[key]
    return value


class Damaged(NamedTuple):
    kind: str
    what: str  # what was done, for a failure's report
    raw: bytes

    def __repr__(self):
        return f"Damaged({self.kind}: {self.what})"


@st.composite
def corruptions(draw, raw, header, body):
    """A Damaged copy of the checkpoint file `raw` (its header parsed, and its tensors' bytes)."""
    kind = draw(st.sampled_from(["header byte", "header length", "offsets", "dtype", "shape", "tensor name",
                                 "metadata value", "metadata field removed", "metadata field added", "truncation",
                                 "non-finite value"]))
    event(kind)
    header = json.loads(json.dumps(header))  # a copy to damage
    tensors = sorted(name for name in header if name != "__metadata__")
    name = draw(st.sampled_from(tensors))
    if kind == "header byte":
        where, byte = draw(st.integers(8, 8 + struct.unpack("<Q", raw[:8])[0] - 1)), draw(st.sampled_from(NOT_IN_JSON))
        return Damaged(kind, f"byte {where} := {byte:#x}", raw[:where] + bytes([byte]) + raw[where + 1:])
    if kind == "header length":
        n = struct.unpack("<Q", raw[:8])[0]
        other = draw(st.one_of(st.integers(0, 2**64 - 1), st.integers(max(0, n - 64), n + 64)).filter(lambda x: x != n))
        return Damaged(kind, f"{n} -> {other}", struct.pack("<Q", other) + raw[8:])
    if kind == "offsets":
        which = draw(st.integers(0, 1))
        old = header[name]["data_offsets"][which]
        header[name]["data_offsets"][which] = draw(st.one_of(
            st.integers(-10, len(body) + 10), st.integers(old - 16, old + 16), st.sampled_from(["0", 1.5, None, True])
        ).filter(lambda x: x != old or type(x) is not int))
    elif kind == "dtype":
        header[name]["dtype"] = draw(st.sampled_from(["F64", "F32", "F16", "BF16", "I64", "U8", "", "f64", 64, None])
                                     .filter(lambda x: x != header[name]["dtype"]))
    elif kind == "shape":
        header[name]["shape"] = draw(st.one_of(st.lists(st.integers(-2, 40), max_size=3), st.just("27,16"))
                                     .filter(lambda x: x != header[name]["shape"]))
    elif kind == "tensor name":
        header[draw(st.text(min_size=1, max_size=12).filter(lambda x: x not in header))] = header.pop(name)
    elif kind == "non-finite value":  # one float64 of the tensors made NaN or an infinity
        where, value = draw(st.integers(0, len(body) // 8 - 1)), draw(st.sampled_from(["nan", "inf", "-inf"]))
        damaged = body[:8 * where] + struct.pack("<d", float(value)) + body[8 * where + 8:]
        return Damaged(kind, f"value {where} := {value}", raw[:len(raw) - len(body)] + damaged)
    elif kind == "truncation":
        size = draw(st.integers(0, len(raw) - 1))
        return Damaged(kind, f"{size} of {len(raw)} bytes kept", raw[:size])
    else:
        damage_metadata(draw, kind, header["__metadata__"])
    what = json.dumps({key: value for key, value in header.items() if key in (name, "__metadata__")})
    return Damaged(kind, what, pack(header, body))


def damage_metadata(draw, kind, meta):
    """One metadata value made wrong: replaced by one of another JSON type, removed, or given an unknown field."""
    key = draw(st.sampled_from(sorted(set(meta) - {"format", "version"})))
    value = json.loads(meta[key])
    path = draw(st.sampled_from(list(nodes(value))))
    if kind == "metadata field added":
        target = draw(st.sampled_from([p for p in nodes(value) if isinstance(at(value, p), dict)] or [None]))
        if target is None:  # a value with no object in it: add a field beside it
            meta["unknown_" + key] = "1"
            return
        at(value, target)["no_such_field"] = 1
    elif kind == "metadata field removed" and path:
        del at(value, path[:-1])[path[-1]]
    elif kind == "metadata field removed":
        del meta[key]
        return
    else:
        old = at(value, path)
        new = draw(st.sampled_from([v for v in OTHER_VALUES if category(v) != category(old)]))
        if path:
            at(value, path[:-1])[path[-1]] = new
        else:
            value = new
    meta[key] = json.dumps(value)


def run_main(*args):
    """(exit code, stdout, stderr) of the command line, run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def damaged_run(trained, tmp_path_factory):
    """A copy of the run directory, without best.safetensors, whose checkpoint each example overwrites."""
    copy = tmp_path_factory.mktemp("damaged") / "run"
    shutil.copytree(trained[0], copy)
    (copy / "best.safetensors").unlink()
    return copy


@pytest.mark.parametrize("command", ["sample", "train --resume"])
@settings(max_examples=500, deadline=None)
@given(data=st.data())
def test_every_corruption_is_one_line_and_exit_2(trained, damaged_run, command, data):
    damaged = data.draw(corruptions(*trained[1:]), label="damaged")
    (damaged_run / "checkpoint.safetensors").write_bytes(damaged.raw)
    args = ["sample", "--from", damaged_run, "--num-samples", 1] if command == "sample" else \
        ["train", "--resume", damaged_run, "--num-samples", 0]
    code, out, err = run_main(*args)
    assert (code, out) == (2, ""), (code, out, err)
    assert err.startswith("microgpt: error: ") and err.count("\n") == 1, err

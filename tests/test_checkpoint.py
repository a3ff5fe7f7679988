"""Checkpoints: the public safetensors layout (the safetensors package reads them), exact round trips,
atomic writes, and one clear line for every file that is not a checkpoint we can use."""
import errno
import json
import os
import re
import struct
from array import array

import pytest
from conftest import rewrite_header

from microgpt import checkpoint
from microgpt.errors import UserError

TENSORS = {"wte": ((2, 3), [0.1, -2.5, 3e-300, 1e300, -0.0, 7.0]), "adam.m.wte": ((2, 3), [1e-17] * 6)}


def test_round_trip_is_exact(tmp_path):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, TENSORS, {"step": 7, "settings": {"a": [1, 2]}})
    tensors, meta = checkpoint.load(path)
    assert {k: (shape, list(v)) for k, (shape, v) in tensors.items()} == TENSORS
    assert meta == {"version": checkpoint.VERSION, "step": 7, "settings": {"a": [1, 2]}}


def test_the_safetensors_package_opens_it(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, TENSORS, {"step": 7})
    loaded = safetensors_numpy.load_file(str(path))
    assert loaded["wte"].shape == (2, 3) and loaded["wte"].ravel().tolist() == TENSORS["wte"][1]
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        assert f.metadata()["format"] == "microgpt" and json.loads(f.metadata()["step"]) == 7


def test_layout_is_header_length_json_then_little_endian_data(tmp_path):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, {"x": ((2,), [1.5, -2.0])}, {})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    assert header["x"] == {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]}
    assert struct.unpack("<2d", raw[8 + n:]) == (1.5, -2.0) and (8 + n) % 8 == 0


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, TENSORS, {"step": 1})
    before = path.read_bytes()

    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoint.os, "fsync", disk_full)
    with pytest.raises(UserError, match=r"No space left on device.*previous checkpoint.*intact"):
        checkpoint.save(path, TENSORS, {"step": 2})
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]


def test_each_tensor_keeps_its_precision(tmp_path):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, {"x": ((3,), array("f", [0.5, 1.25, -3.0])), "y": ((1,), array("d", [0.1]))}, {})
    tensors, _ = checkpoint.load(path)
    assert list(tensors["x"][1]) == [0.5, 1.25, -3.0] and tensors["x"][1].typecode == "f"
    assert list(tensors["y"][1]) == [0.1] and tensors["y"][1].typecode == "d"


def test_numpy_arrays_are_written_from_their_bytes(tmp_path):
    np = pytest.importorskip("numpy")
    flat = np.arange(12, dtype=np.float32) / 7
    checkpoint.save(tmp_path / "a.safetensors", {"x": ((2, 3), flat[3:9])}, {})  # a view, as layout.py hands out
    checkpoint.save(tmp_path / "b.safetensors", {"x": ((2, 3), array("f", flat[3:9].tolist()))}, {})
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_a_duplicate_is_not_touched_by_later_saves(tmp_path):
    path, best = tmp_path / "checkpoint.safetensors", tmp_path / "best.safetensors"
    checkpoint.save(path, TENSORS, {"step": 1})
    checkpoint.duplicate(path, best)  # a hard link here: nothing written twice
    checkpoint.save(path, {"wte": ((2, 3), [9.0] * 6)}, {"step": 2})  # a new file replaces the old name
    assert checkpoint.load(best)[1]["step"] == 1 and list(checkpoint.load(best)[0]["wte"][1]) == TENSORS["wte"][1]
    assert checkpoint.load(path)[1]["step"] == 2 and sorted(p.name for p in tmp_path.iterdir()) == [
        "best.safetensors", "checkpoint.safetensors"]


def good_file(tmp_path):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, TENSORS, {"step": 1})
    return path


def rewritten(change):
    """A damage that rewrites the file's JSON header with `change(header)` and keeps its tensors' bytes."""
    return lambda path: rewrite_header(path, change)


def set_entry(name, **fields):
    return rewritten(lambda header: header[name].update(fields))


BROKEN = {  # the damage, and what the one line says (TENSORS: wte at bytes 0-48, adam.m.wte at 48-96, both F64)
    "missing": (lambda p: p.unlink(), "no checkpoint at"),
    "empty": (lambda p: p.write_bytes(b""), "not a safetensors file"),
    "text": (lambda p: p.write_text("hello, this is not a checkpoint at all"), "not a safetensors file"),
    "JSON whose ninth byte is {": (lambda p: p.write_text('{"a": 1, {"b": 2}}' * 3), "not a safetensors file"),
    "header not UTF-8": (lambda p: p.write_bytes(p.read_bytes().replace(b'"wte"', b'"\xffte"', 1)),
                         "not a safetensors file"),
    "header a JSON list": (lambda p: p.write_bytes(struct.pack("<Q", 5) + b"[1,2]"), "not a safetensors file"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:-10]), "truncated"),
    "header cut": (lambda p: p.write_bytes(p.read_bytes()[:20]), "truncated"),
    "foreign safetensors": (lambda p: p.write_bytes(struct.pack("<Q", 2) + b"{}"), "not a microgpt checkpoint"),
    "bytes after the last tensor": (lambda p: p.write_bytes(p.read_bytes() + b"\0" * 8), "8 bytes follow"),
    "offsets not a whole number of values": (set_entry("wte", data_offsets=[0, 47]), "wte is 47 bytes"),
    "offsets cover fewer bytes than the shape": (set_entry("wte", shape=[3, 3]), "wte is 48 bytes, but"),
    "offsets backwards": (set_entry("wte", data_offsets=[48, 0]), "no valid data_offsets"),
    "a gap between tensors": (set_entry("adam.m.wte", data_offsets=[56, 104]), "starts at byte 56"),
    "tensors overlapping": (set_entry("adam.m.wte", data_offsets=[40, 88]), "starts at byte 40"),
    "offsets not numbers": (set_entry("wte", data_offsets=["0", "48"]), "no valid data_offsets"),
    "F32 label over F64 bytes": (set_entry("wte", dtype="F32"), "but 2 dimensions [2, 3] of F32 are 24"),
    "a dtype we do not read": (set_entry("wte", dtype="F16"), "holds wte as 'F16'"),
    "a negative dimension": (set_entry("wte", shape=[-2, -3]), "has the shape [-2, -3]"),
    "an extra field": (set_entry("wte", extra=1), "has the fields"),
    "metadata not strings": (rewritten(lambda h: h["__metadata__"].update(step=1)), "not a microgpt checkpoint"),
    "metadata not JSON": (rewritten(lambda h: h["__metadata__"].update(step="{")), "metadata field step is not"),
    "version zero": (rewritten(lambda h: h["__metadata__"].update(version="0")), "format version is '0'"),
}


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "c.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="is a FIFO"):
        checkpoint.load(fifo)  # (opening it would wait for a writer forever)


@pytest.mark.parametrize("case", BROKEN)
def test_broken_files_are_refused_in_one_line(tmp_path, case):
    damage, message = BROKEN[case]
    path = good_file(tmp_path)
    damage(path)
    with pytest.raises(UserError, match=re.escape(message)) as error:
        checkpoint.load(path)
    assert "\n" not in str(error.value)


def test_newer_format_version_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    monkeypatch.setattr(checkpoint, "VERSION", checkpoint.VERSION + 1)
    checkpoint.save(path, TENSORS, {})
    monkeypatch.undo()
    with pytest.raises(UserError, match="newer than this microgpt reads"):
        checkpoint.load(path)

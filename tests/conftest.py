"""Shared helpers: run the project's commands the way a user does, in a subprocess."""
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ATOMIC = ROOT / "microgpt" / "atomic.py"


def run_python(*args, cwd, timeout=600, python=sys.executable, env=None):
    """Run `python ARGS...` (or another launcher, such as torchrun) from `cwd` with the repository importable and
    the variables of `env` set; return the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8", **(env or {}))
    return subprocess.run([python, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def microgpt(*args, cwd, **kw):
    """Run `python -m microgpt ARGS...` from `cwd`, as a user does."""
    return run_python("-m", "microgpt", *args, cwd=cwd, **kw)


def rewrite_header(path, change, deep=0):
    """Damage the checkpoint at `path` by `change(header)` on its JSON header (tensor entries, "__metadata__" with
    JSON strings as values), keeping its tensors' bytes; `deep`: an empty list in it nested that deep."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    change(header)
    encoded = json.dumps(header).encode().replace(b"[]", b"[" * deep + b"]" * deep if deep else b"[]")
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + n:])


def change_setting(*keys):
    """A change for rewrite_header that removes settings.KEYS... from the metadata."""
    def change(header):
        settings = json.loads(header["__metadata__"]["settings"])
        part = settings
        for key in keys[:-1]:
            part = part[key]
        del part[keys[-1]]
        header["__metadata__"]["settings"] = json.dumps(settings)
    return change


@pytest.fixture
def run(tmp_path):
    """run(*args): `python ARGS...` in a fresh temporary directory."""
    return lambda *args, **kw: run_python(*args, cwd=tmp_path, **kw)


def recursive_post_order(root):
    """The original microgpt's topological order (recursive), to compare the iterative walk with."""
    topo, visited = [], set()

    def build(v):
        if v not in visited:
            visited.add(v)
            for child in v._children:
                build(child)
            topo.append(v)
    build(root)
    return topo

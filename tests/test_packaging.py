"""Installed as users install it: the sdist holds the whole project, the wheel built from it every subpackage and
data file, and the wheel installed into a fresh virtual environment trains and samples from a directory outside the
checkout (where nothing of the source tree can be imported by accident)."""
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest
from conftest import ROOT

pytest.importorskip("build")
SKIP = shutil.ignore_patterns(".git", "runs", "dist", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
                             ".venv", "venv")


def project_files(*folders):
    """The files of these folders of the checkout, relative to it (caches left out)."""
    found = set()
    for folder in folders:
        for where, dirs, files in os.walk(ROOT / folder):
            dirs[:] = [d for d in dirs if d != "__pycache__" and not d.endswith("_cache")]
            found |= {os.path.relpath(os.path.join(where, f), ROOT) for f in files if not f.endswith(".pyc")}
    return found


def command(*args, cwd, env=None):
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-2000:])
    return result.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(sdist, wheel), built as `python -m build` does (the wheel from the unpacked sdist), from a copy of the
    checkout so that nothing is written into it."""
    where = tmp_path_factory.mktemp("build")
    shutil.copytree(ROOT, where / "src", ignore=SKIP)
    command(sys.executable, "-m", "build", "--no-isolation", "--outdir", where / "dist", where / "src", cwd=where)
    (sdist,), (wheel,) = (where / "dist").glob("*.tar.gz"), (where / "dist").glob("*.whl")
    return sdist, wheel


def test_the_sdist_holds_the_whole_project(built):
    with tarfile.open(built[0]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    expected = project_files("microgpt", "tests", "scripts") | {"README.md", "LICENSE", "pyproject.toml", ".ci/run"}
    assert expected - names == set()


def test_the_wheel_holds_every_module_and_data_file(built):
    with zipfile.ZipFile(built[1]) as wheel:
        names = set(wheel.namelist())
    assert project_files("microgpt") - names == set()
    assert {"microgpt/engines/torch.py", "microgpt/data/names.txt"} <= names


def test_the_installed_wheel_trains_and_samples_outside_the_checkout(built, tmp_path):
    venv = tmp_path / "venv"
    command(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    command(bin_dir / "python", "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", built[1], cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = command(bin_dir / "python", "-c", "import microgpt.engines, microgpt; print(microgpt.__file__)",
                    cwd=elsewhere, env=env)
    assert where.startswith(str(venv)), where
    out = command(bin_dir / "microgpt", "train", "--steps", 20, "--out", "run", "--num-samples", 3, cwd=elsewhere,
                  env=env)
    assert "engine python" in out and "samples (temperature" in out  # (the fresh environment has no NumPy)
    out = command(bin_dir / "microgpt", "sample", "--from", "run", "--num-samples", 3, cwd=elsewhere, env=env)
    assert out.startswith("run/best.safetensors: step 20") and len(out.splitlines()) == 4

"""`bench` measures every installed engine and prints a row for each, with the speed-up over scalar."""
import importlib.util
import io
import re

import pytest
from conftest import ROOT, run_python

from microgpt import engines
from microgpt.cli import build_parser
from microgpt.progress import Progress


def test_bench_prints_a_row_per_engine_with_its_speedup(run):
    result = run("-m", "microgpt", "bench", "--config", "reference", "--rounds", 2, "--min-time", 0.01,
                 "--no-pypy")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("machine: ") and "2 interleaved rounds, median" in out
    rows = {m[1]: m for m in re.finditer(
        r"^(\w+)\s+([\d,.]+)\s+([\d,.]+)\s+([\d,]+)\s+([\d,]+)x$", out, re.M)}
    assert list(rows) == engines.installed()
    assert rows["scalar"][5] == "1"
    for name, row in rows.items():
        ms_per_step, steps_per_s = (float(row[i].replace(",", "")) for i in (2, 3))
        assert ms_per_step > 0 and abs(ms_per_step * steps_per_s / 1000 - 1) < 0.02, name  # 3 figures each
        assert int(row[5].replace(",", "")) >= 1, name  # (how much faster is bench's to say, not a timed test's:
        # on a loaded machine torch at this size has come out at 1x)


def load_script(name):
    """A script of scripts/ as a module (they are run as files, not imported as a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_step_profile_measures_only_ordinary_steps(tmp_path):
    profile_step = load_script("profile_step")
    args = build_parser().parse_args(["train", "--steps", "3", "--n-layer", "1", "--n-embd", "8", "--n-head", "2",
                                "--block-size", "8", "--batch-size", "2", "--engine", "python", "--log-every", "2",
                                      "--eval-every", "5"])
    trainer = profile_step.ordinary_trainer(args, 7, tmp_path)
    progress = Progress(trainer.settings.train.steps, io.StringIO(), trainer.settings.log_every)
    for _ in range(7):  # past the run's last step, and past steps the run logs and evaluates at
        trainer.train_step(progress)
    assert trainer.step == 7 and not (tmp_path / "log.jsonl").read_text()
    assert not (tmp_path / "checkpoint.safetensors").exists()  # (no evaluation either)


@pytest.mark.parametrize("engine", [name for name in ("python", "numpy", "torch") if name in engines.installed()])
def test_the_step_profile_times_each_phase_and_lists_the_costliest_operations(engine, tmp_path):
    result = run_python(ROOT / "scripts" / "profile_step.py", "--engine", engine, "--n-layer", "1", "--n-embd", 8,
                        "--n-head", 2, "--block-size", 8, "--batch-size", 4, "--grad-clip", 1, "--dropout", 0.1,
                        "--steps-untimed", 2, "--steps-timed", 3, "--steps-profiled", 3, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    step_ms = float(re.search(r"^steps: ([\d.]+) ms per step over 3 steps$", out, re.M)[1])
    phases = {m[1]: float(m[2]) for m in re.finditer(r"^  (\w[\w ]*?) +(-?[\d.]+)$", out, re.M)}
    assert list(phases) == ["batch", "loss and gradients", "gradient clipping", "Adam", "reading losses", "the rest"]
    assert max(phases, key=phases.get) == "loss and gradients"
    assert 0 <= phases["the rest"] < step_ms  # (the phases follow each other within the step: none counted twice)
    own = re.findall(r"^ +([\d.]+) +([\d.]+)% +([\d.]+)  (.+)$", out.split("own time")[1], re.M)
    assert 3 <= len(own) <= 12
    assert sum(float(share) for _, share, _, _ in own) <= 100.05
    assert [float(ms) for ms, *_ in own] == sorted((float(ms) for ms, *_ in own), reverse=True)
    names = [name for *_, name in own]  # torch's operations; the engine's own Python functions
    assert "aten::mm" in names if engine == "torch" else any(name.startswith(f"{engine}.py:") for name in names)


@pytest.mark.parametrize(("options", "fix"), [(["--engine", "python", "--trace", "t.json"], "add --engine torch"),
                                              (["--out", "run"], "drop it")], ids=["trace", "out"])
def test_the_step_profile_refuses_options_it_cannot_honour_in_one_line(tmp_path, options, fix):
    result = run_python(ROOT / "scripts" / "profile_step.py", *options, "--steps-untimed", 1, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and fix in result.stderr
    assert not (tmp_path / "t.json").exists() and not (tmp_path / "run").exists()

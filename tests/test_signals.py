"""Ctrl-C and SIGTERM are honoured within about a second in every phase: a training step ends and saves, an
evaluation (the final one included) is cut short and the state saved and said, and the resumed run evaluates first;
a second signal of either kind quits at once; sampling stops; every message names the signal."""
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, microgpt

from microgpt import checkpoint

PROMPT_LIMIT = 3.0  # seconds from a signal to the process's end: "about a second", on a noisy shared machine


def start(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "microgpt", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(process, prefix):
    """The output up to the first line that starts with `prefix`."""
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith(prefix):
            return "".join(seen)
    raise AssertionError(f"never printed {prefix!r}: {''.join(seen)} {process.stderr.read()}")


def signal_and_time(process, signum):
    """(stdout, stderr, seconds from the signal to the end)."""
    sent = time.monotonic()
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    return out, err, time.monotonic() - sent


def test_sigterm_in_the_final_evaluation_saves_and_the_resume_evaluates_first(tmp_path):
    # the scalar engine takes about 4 minutes for the 1,000 held-out names: the evaluation must be cut short
    process = start("train", "--engine", "scalar", "--steps", 3, "--log-every", 1, "--out", "run",
                    "--num-samples", 0, cwd=tmp_path)
    wait_for(process, "step 3/3")
    time.sleep(0.5)  # into the evaluation
    out, err, seconds = signal_and_time(process, signal.SIGTERM)
    assert process.returncode == 0 and seconds < PROMPT_LIMIT, (seconds, out, err)
    assert "SIGTERM: finishing this step" in out and "interrupted after step 3 (its evaluation was cut short" in out
    _, meta = checkpoint.load(tmp_path / "run" / "checkpoint.safetensors")
    assert meta["step"] == 3 and meta["evaluation_due"] and meta["best_held_out"] == float("inf")
    resumed = microgpt("train", "--resume", "run", "--engine", "python", "--num-samples", 0, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "step 3: held-out loss" in resumed.stdout and "best held-out loss" in resumed.stdout
    _, meta = checkpoint.load(tmp_path / "run" / "checkpoint.safetensors")
    assert not meta["evaluation_due"] and meta["best_held_out"] < 3.5


@pytest.mark.parametrize(("first", "second", "name"), [(signal.SIGTERM, signal.SIGINT, "Ctrl-C"),
                                                       (signal.SIGINT, signal.SIGTERM, "SIGTERM")])
def test_a_second_signal_of_either_kind_quits_at_once(tmp_path, first, second, name):
    # a scalar step of 64 names takes about 8 s: the first signal waits for it, the second does not
    process = start("train", "--engine", "scalar", "--batch-size", 64, "--steps", 9, "--out", "run", cwd=tmp_path)
    wait_for(process, "run directory:")
    time.sleep(0.5)  # into the first step
    process.send_signal(first)
    time.sleep(1.5)  # (signals within a second of the first are taken as its copies, as torchrun sends them)
    out, err, seconds = signal_and_time(process, second)
    assert process.returncode == 128 + second and seconds < PROMPT_LIMIT, (seconds, out, err)
    assert err == f"microgpt: stopped by {name}\n" and "quits at once" in out


def test_sampling_stops_at_a_signal_and_names_it(tmp_path):
    assert microgpt("train", "--steps", 5, "--out", "run", "--num-samples", 0, cwd=tmp_path).returncode == 0
    process = start("sample", "--from", "run", "--engine", "python", "--num-samples", 10**6, cwd=tmp_path)
    wait_for(process, "  1 ")
    _, err, seconds = signal_and_time(process, signal.SIGTERM)
    assert process.returncode == 128 + signal.SIGTERM and seconds < PROMPT_LIMIT, (seconds, err)
    assert err == "microgpt: stopped by SIGTERM\n"


def test_a_signal_while_train_prints_samples_says_the_run_is_saved(tmp_path):
    process = start("train", "--engine", "python", "--steps", 5, "--out", "run", "--num-samples", 10**6, cwd=tmp_path)
    wait_for(process, "  1 ")
    out, err, seconds = signal_and_time(process, signal.SIGINT)
    assert process.returncode == 128 + signal.SIGINT and seconds < PROMPT_LIMIT, (seconds, err)
    assert "Ctrl-C: samples cut short; the run is complete, saved in run" in out and err == ""
    assert checkpoint.load(tmp_path / "run" / "checkpoint.safetensors")[1]["step"] == 5

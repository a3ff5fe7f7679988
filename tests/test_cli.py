"""The command line as a user meets it: help everywhere, a small run end to end, and one clear line
(exit code 2, no traceback) for every mistake."""
import re

import pytest
from conftest import ATOMIC

from microgpt.cli import COMMANDS


@pytest.mark.parametrize("command", [[], *([name] for name in COMMANDS)], ids=lambda c: " ".join(c) or "top")
def test_help(run, command):
    result = run("-m", "microgpt", *command, "--help")
    assert result.returncode == 0 and result.stdout.startswith(f"usage: microgpt {' '.join(command)}".rstrip())
    assert "options:" in result.stdout and result.stderr == ""


def test_every_command_is_listed_in_the_top_help(run):
    listed = run("-m", "microgpt", "--help").stdout
    assert len(COMMANDS) == 10 and all(re.search(rf"^    {name}\b", listed, re.M) for name in COMMANDS)


def test_train_runs_end_to_end_on_a_users_file(run, tmp_path):
    data = tmp_path / "words.txt"
    data.write_text("anna\nbob\nclara\n")
    result = run("-m", "microgpt", "train", "--data", data, "--steps", 6, "--log-every", 3,
                 "--num-samples", 4, "--n-embd", 8, "--n-head", 2)
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0].endswith("words.txt: lines (one short item per line, no blank lines); 2 documents to train on, "
                           "1 held out; vocab size 8")  # a b c l n o r + BOS
    kept = [line for line in out if "| loss" in line]
    assert [line.split("|")[0].strip() for line in kept] == ["step 1/6", "step 3/6", "step 6/6"]
    assert re.fullmatch(r"step 6/6 \| loss \d+\.\d{4} \| [\d.]+ ms/step \| [\d,]+ tok/s \| ETA 0s", kept[-1])
    samples = out[out.index("samples (temperature 0.5):") + 1:]
    assert len(samples) == 4 and all(set(s[5:]) <= set("anbolcr") for s in samples)


def test_train_computes_the_same_run_as_the_atomic_file(run):
    # The defaults are the reference run: the same seed and draws give the same loss at every step
    # and the same samples as the atomic file with the same flags (whose full run is the golden test).
    cli = run("-m", "microgpt", "train", "--steps", 5, "--log-every", 1, "--num-samples", 3)
    atomic = run(ATOMIC, "--steps", 5, "--num-samples", 3)
    assert cli.returncode == 0 and atomic.returncode == 0, cli.stderr + atomic.stderr
    cli_losses = [line.split("| loss ")[1][:6] for line in cli.stdout.splitlines() if "| loss" in line]
    atomic_losses = [line.split("| loss ")[1] for line in atomic.stdout.splitlines() if "| loss" in line]
    assert cli_losses == atomic_losses and cli_losses[0] == "3.3660"
    cli_samples = cli.stdout.split("samples (temperature 0.5):\n")[1].split()[1::2]
    atomic_samples = [line.split(": ")[1] for line in atomic.stdout.splitlines() if "sample " in line]
    assert cli_samples == atomic_samples


BAD_ARGUMENTS = {
    "negative steps": (["--steps", "-3"], "--steps: must be at least 1"),
    "not a number": (["--n-embd", "big"], "expected a whole number"),
    "indivisible heads": (["--n-embd", "10"], "not divisible by --n-head"),
    "zero temperature": (["--temperature", "0"], "greater than 0"),
    "unknown flag": (["--learning-rate", "1"], "unrecognized arguments"),
    "missing data": (["--data", "no_such_file.txt"], "no such file"),
}


@pytest.mark.parametrize("case", BAD_ARGUMENTS)
def test_bad_arguments_give_one_line_and_exit_2(run, case):
    flags, message = BAD_ARGUMENTS[case]
    result = run("-m", "microgpt", "train", *flags)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"caf\xe9\n"], ids=["empty", "blank", "latin-1"])
def test_unusable_data_file_gives_one_line(run, tmp_path, content):
    data = tmp_path / "data.txt"
    data.write_bytes(content)
    result = run("-m", "microgpt", "train", "--data", data)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_data_directory_is_refused(run, tmp_path):
    result = run("-m", "microgpt", "train", "--data", tmp_path)
    assert result.returncode == 2 and "is a directory" in result.stderr


def test_missing_command_is_an_error(run):
    result = run("-m", "microgpt")
    assert result.returncode == 2 and "COMMAND" in result.stderr

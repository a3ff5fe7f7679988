"""The atomic file's promises: short, standard library only, importable without side effects,
deterministic, and with size flags that reject nonsense."""
import ast
import sys

import pytest
from conftest import ATOMIC


def test_atomic_file_is_at_most_250_lines():
    assert len(ATOMIC.read_text().splitlines()) <= 250


def test_atomic_file_imports_only_the_standard_library():
    imported = set()
    for node in ast.walk(ast.parse(ATOMIC.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported and imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)


def test_import_has_no_side_effects(run):
    result = run("-c", "import random; state = random.getstate(); import microgpt.atomic; "
                       "assert random.getstate() == state")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""


def small_run(run, *flags):
    result = run(ATOMIC, "--steps", 4, "--num-samples", 5, *flags)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_same_seed_same_output_different_seed_different_output(run):
    first = small_run(run)
    assert small_run(run) == first
    other = small_run(run, "--seed", 7)
    assert other != first
    assert other.splitlines()[:3] == first.splitlines()[:3]  # same data and model, other numbers


def test_size_flags_change_the_model(run, tmp_path):
    data = tmp_path / "words.txt"
    data.write_text("abc\nbca\n\ncab\n")
    out = small_run(run, "--n-layer", 2, "--n-embd", 8, "--n-head", 2, "--block-size", 3,
                    "--data", data, "--temperature", 1.0)
    lines = out.splitlines()
    # vocab 4 (a, b, c, BOS); params: wte 4x8 + wpe 3x8 + lm_head 4x8 + 2 layers x 12 x 8 x 8
    assert lines[:3] == ["num docs: 3", "vocab size: 4", f"num params: {32 + 24 + 32 + 2 * 12 * 64}"]
    assert all(len(line.split(": ", 1)[1]) <= 3 for line in lines if line.startswith("sample"))


@pytest.mark.parametrize("flags", [["--steps", "0"], ["--n-embd", "10"], ["--temperature", "0"],
                                   ["--n-layer", "x"], ["--data", "/no/such/file"]])
def test_bad_flags_exit_2_with_a_message(run, flags):
    result = run(ATOMIC, *flags)
    assert result.returncode == 2
    assert "error:" in result.stderr and "Traceback" not in result.stderr

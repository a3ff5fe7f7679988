"""The golden test: `python microgpt/atomic.py` with no arguments prints the reference run.

tests/golden/reference_run.txt is what the original microgpt program printed on this project's
bundled names.txt; the figures that ../shared/REFERENCE.md publishes are also asserted one by one
below, so the golden file itself is checked against the published run. This is the one full scalar
run the suite pays for (a few minutes of one core)."""
from pathlib import Path

from conftest import ATOMIC

GOLDEN = Path(__file__).parent / "golden" / "reference_run.txt"

# The published figures of the reference run (REFERENCE.md).
PUBLISHED_LOSSES = {1: "3.3660", 10: "3.2229", 50: "2.4050", 100: "3.3669", 500: "2.0645", 1000: "2.6497"}
PUBLISHED_SAMPLES = ["kamon", "ann", "karai", "jaire", "vialan", "karia", "yeran", "anna", "areli", "kaina",
                     "konna", "keylen", "liole", "alerin", "earan", "lenne", "kana", "lara", "alela", "anton"]


def check_published_figures(lines):
    assert lines[:3] == ["num docs: 32033", "vocab size: 27", "num params: 4192"]
    for step, loss in PUBLISHED_LOSSES.items():
        assert lines[2 + step] == f"step {step:4d} / 1000 | loss {loss}"
    assert lines[1003:1005] == ["", "--- inference (new, hallucinated names) ---"]
    assert lines[1005:] == [f"sample {i + 1:2d}: {name}" for i, name in enumerate(PUBLISHED_SAMPLES)]


def test_golden_file_holds_the_published_figures():
    check_published_figures(GOLDEN.read_text().splitlines())


def test_atomic_file_reproduces_the_reference_run_line_by_line(run):
    result = run(ATOMIC)  # from an empty directory: the bundled data is found next to the file
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    check_published_figures(lines)
    golden = GOLDEN.read_text().splitlines()
    mismatches = [(i + 1, want, got) for i, (want, got) in enumerate(zip(golden, lines)) if want != got]
    assert not mismatches, f"first mismatches (line, want, got): {mismatches[:5]}"
    assert len(lines) == len(golden)

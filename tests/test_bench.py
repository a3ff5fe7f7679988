"""`bench` measures every installed engine and prints a row for each, with the speed-up over scalar."""
import re

from microgpt import engines


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

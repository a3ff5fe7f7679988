"""`compare`: runs side by side, a table in the terminal and one self-contained page that a browser renders; and
the charts both `compare` and `report` draw: round ticks, a log scale, a legend that never covers a line."""
import json
import os
import re
import subprocess
import xml.etree.ElementTree as ET

import pytest
from conftest import microgpt, rewrite_header
from test_report import CHROMIUM, SVG, png_pixels

from microgpt.charts import Series, line_chart, log_ticks, nice_ticks


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """Two 2-layer names runs of 60 steps, the full model and one without its MLP, and their comparison."""
    where = tmp_path_factory.mktemp("compare")
    for name, extra in (("full", []), ("no-mlp", ["--ablate", "mlp"])):
        result = microgpt("train", "--steps", 60, "--n-layer", 2, "--log-every", 10, "--eval-every", 30, "--out",
                          name, "--num-samples", 0, *extra, cwd=where)
        assert result.returncode == 0, result.stderr
    result = microgpt("compare", "full", "no-mlp", "--out", "both.html", cwd=where)
    assert result.returncode == 0, result.stderr
    return where, result.stdout


def test_the_terminal_table_has_what_differs_and_the_results(compared):
    where, out = compared
    header, rule, full, no_mlp, wrote = out.splitlines()
    assert header.split() == ["run", "ablate", "best", "held-out", "vs", "first", "step", "wall", "time"]
    assert set(rule) == {"-", " "} and wrote.startswith("wrote both.html")
    best = {json.loads(line)["held_out_loss"] for line in (where / "full" / "log.jsonl").open()
            if "held_out_loss" in line}
    assert full.split()[:4] == ["full", "none", f"{min(best):.4f}", "60/60"]
    name, ablate, loss, difference, step, _ = no_mlp.split()
    assert (name, ablate, step) == ("no-mlp", "mlp", "60/60")
    assert float(difference) == pytest.approx(float(loss) - min(best), abs=2e-4)


def test_the_page_is_well_formed_self_contained_and_overlays_the_runs(compared):
    where, _ = compared
    page = where / "both.html"
    root = ET.parse(page).getroot()
    text = page.read_text()
    assert "<script" not in text and "http://" not in text.replace("http://www.w3.org/", "")
    svgs = root.findall(f".//{SVG}svg")
    assert [svg.find(f"{SVG}title").text for svg in svgs] == [
        "loss (nats per token)", "gradient norm (before clipping)", "dead ReLUs, mean over the layers (fraction)"]
    assert len(svgs[0].findall(f"{SVG}polyline")) == 4  # train and held-out, of each run
    assert "model.n_layer: 2" in text  # among the settings both share


@pytest.mark.skipif(not CHROMIUM, reason="no chromium (CI installs Debian's)")
def test_the_page_renders_in_headless_chromium(compared, tmp_path):
    where, _ = compared
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,1200"]
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", (where / "both.html").as_uri()], capture_output=True,
                   timeout=120, check=True)
    width, _height, bpp, rows = png_pixels(shot)
    pixels = [tuple(row[x:x + 3]) for row in rows[::8] for x in range(0, width * bpp, 8 * bpp)]
    ink = [p for p in pixels if p != (255, 255, 255)]
    assert len(ink) > 0.02 * len(pixels) and len(set(ink)) > 10, (len(ink), len(set(ink)))


@pytest.mark.parametrize(("args", "says"), [
    (["full"], "give at least two run directories"),
    (["full", "nowhere"], "nowhere is not a run directory"),
    (["full", "no-mlp", "--out", "/no/such/dir/x.html"], "cannot write /no/such/dir/x.html")])
def test_compare_mistakes_are_one_line(compared, args, says):
    where, _ = compared
    result = microgpt("compare", *args, cwd=where)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and says in result.stderr, result.stderr


def copy_run(source, target, log=None):
    target.mkdir()
    for f in source.iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    if log:
        (target / "log.jsonl").write_text(log(source.joinpath("log.jsonl").read_text()))
    return target


def records(change):
    """A log.jsonl rewrite that changes each record (a dict) in place."""
    def rewrite(text):
        lines = [json.loads(line) for line in text.splitlines()]
        for record in lines:
            change(record)
        return "".join(json.dumps(record) + "\n" for record in lines)
    return rewrite


DAMAGE = {
    "cut while written": (lambda text: text + '{"step": 61, "train_lo', 9),  # after 6 logged steps, 2 evaluations
    "a key missing": (records(lambda r: r.pop("train_loss_smooth", None)), 1),
    "health without tensors": (records(lambda r: r.get("health") and r["health"].pop("tensors")), 1),
    "a loss that is text": (records(lambda r: "held_out_loss" in r and r.update(held_out_loss="low")), 4),
    "elapsed that is text": (records(lambda r: r.update(elapsed="soon")), 1),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_log_is_one_line_for_report_and_compare(compared, tmp_path, damage):
    where, _ = compared
    change, line = DAMAGE[damage]
    damaged = copy_run(where / "full", tmp_path / "damaged", change)
    for result in (microgpt("report", "--from", damaged, cwd=tmp_path),
                   microgpt("compare", damaged, where / "full", cwd=tmp_path)):
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert f"log.jsonl, line {line}, is not a record that train writes" in result.stderr


def test_run_names_xml_cannot_hold_still_make_a_well_formed_page(compared, tmp_path):
    where, _ = compared
    odd = [copy_run(where / "full", tmp_path / "ctl\x01dir"),
           copy_run(where / "no-mlp", tmp_path / os.fsdecode(b"bad\xffname"))]  # a control character; not UTF-8
    result = microgpt("compare", *odd, "--out", "odd.html", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = "".join(ET.parse(tmp_path / "odd.html").getroot().itertext())
    assert "ctl\ufffddir" in text and "bad\ufffdname" in text


def test_twice_the_same_run_and_a_run_never_evaluated(compared, tmp_path):
    where, _ = compared
    twice = microgpt("compare", "full", "./full", cwd=where)
    assert twice.returncode == 2 and "full and ./full are the same run" in twice.stderr
    stopped = copy_run(where / "full", tmp_path / "stopped")  # as if stopped before its first evaluation
    rewrite_header(stopped / "checkpoint.safetensors", lambda h: h["__metadata__"].update(best_held_out="Infinity"))
    row = microgpt("compare", where / "full", stopped, cwd=tmp_path).stdout.splitlines()[3].split()
    assert row[:3] == ["stopped", "-", "60/60"]


def test_ticks_are_round_numbers():
    assert nice_ticks(0, 1000) == [0, 200, 400, 600, 800, 1000]
    assert nice_ticks(1.93, 3.4) == pytest.approx([2.0, 2.5, 3.0])
    assert log_ticks(-4.2, -1.5) == pytest.approx([1e-4, 1e-3, 1e-2])  # the powers of ten inside
    assert log_ticks(-0.1, 0.75) == pytest.approx([1, 2, 5])  # fewer than two: 1, 2 and 5 times them


def numbers(svg, tag, attribute):
    return [float(x) for x in re.findall(rf'<{tag} [^>]*?{attribute}="([-\d.]+)"', svg)]


def test_the_legend_sits_beside_the_plot_and_never_over_a_line():
    series = [Series(f"series {i}", [(x, (x + 1) * 10.0**-i) for x in range(50)]) for i in range(12)]
    svg = line_chart("many", series, log_y=True)
    points = [float(x) for path in re.findall(r'points="([^"]+)"', svg) for pair in path.split()
              for x in pair.split(",")[:1]]
    legend = [float(x) for x in re.findall(r'<text x="([\d.]+)"[^>]*>series', svg)]
    assert len(legend) == 12 and min(legend) > max(points)
    height = float(re.search(r'<svg [^>]*height="(\d+)"', svg).group(1))
    assert max(numbers(svg, "text", "y")) < height  # a taller chart when the legend needs it


def test_a_log_scale_puts_each_decade_the_same_distance_apart():
    svg = line_chart("decades", [Series("ratio", [(0, 1e-4), (1, 1e-3), (2, 1e-2)])], log_y=True)
    ys = [float(pair.split(",")[1]) for pair in re.search(r'points="([^"]+)"', svg).group(1).split()]
    assert ys[0] - ys[1] == pytest.approx(ys[1] - ys[2], abs=0.2)
    assert all(f">{tick}</text>" in svg for tick in ("0.0001", "0.001", "0.01"))

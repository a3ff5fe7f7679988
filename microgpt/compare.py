"""`compare DIR DIR [...]`: runs side by side, in the terminal and on one self-contained page.

The terminal gets a table, one row per run: the settings that differ between the runs (the ablations among them),
then each run's best held-out loss, its difference from the first run's, the steps taken and the wall time. The page
(XHTML with inline SVG and no JavaScript, like `report`) has the same table, the settings every run shares, and the
runs' curves overlaid: train and held-out loss, gradient norm and dead ReLUs.
"""
import math
import os
import sys

from microgpt.ablations import listed
from microgpt.charts import esc, xhtml_page
from microgpt.errors import UserError
from microgpt.loading import checkpoint_path, read
from microgpt.logs import Log, health_charts, loss_chart
from microgpt.progress import format_duration


class Run:
    """What compare shows of one run directory: its settings, flattened (model.n_layer, train.lr, ...), its latest
    checkpoint's step and best held-out loss, and its log."""

    def __init__(self, run_dir):
        if not os.path.isfile(os.path.join(run_dir, "checkpoint.safetensors")):
            raise UserError(f"{run_dir} is not a run directory (it holds no checkpoint.safetensors); give "
                            "directories that train wrote (--out)")
        self.dir, self.log = run_dir, Log(run_dir)
        _, meta, _ = read(checkpoint_path(run_dir, "last"))
        self.settings = dict(flatten(meta["settings"]))
        self.settings["ablate"] = listed(meta["settings"]["ablate"])
        self.settings["engine"] = meta["engine"]
        self.step, self.best = meta["step"], meta["best_held_out"]

    def results(self, first):
        """The columns after the settings: best held-out, its difference from the first run's, steps, wall time."""
        evaluated = math.isfinite(self.best) and math.isfinite(first.best)  # (inf: stopped before an evaluation)
        difference = f"{self.best - first.best:+.4f}" if self is not first and evaluated else ""
        elapsed = format_duration(self.log.elapsed) if self.log.elapsed is not None else "-"
        best = f"{self.best:.4f}" if math.isfinite(self.best) else "-"
        return [best, difference, f"{self.step:,}/{self.settings['train.steps']:,}", elapsed]


RESULTS = ["best held-out", "vs first", "step", "wall time"]


def flatten(settings, prefix=""):
    """('model.n_layer', 4), ('train.lr', 0.003), ...: a run's settings as dotted names and values."""
    for key, value in settings.items():
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def names(dirs):
    """How each run is called: its directory's name, or its path where two names are the same (a name that is not
    UTF-8 shown with U+FFFD, as a terminal would)."""
    shown = [d.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for d in dirs]
    short = [os.path.basename(os.path.normpath(d)) for d in shown]
    return short if len(set(short)) == len(short) else shown


def table(runs):
    """(header, rows): a row per run, its name, the settings that differ between the runs, its results."""
    differ = [key for key in runs[0].settings if len({str(run.settings.get(key)) for run in runs}) > 1]
    header = ["run", *(key.rsplit(".", 1)[-1] for key in differ), *RESULTS]  # (model.n_layer: n_layer)
    rows = [[name, *(str(run.settings.get(key)) for key in differ), *run.results(runs[0])]
            for name, run in zip(names([run.dir for run in runs]), runs)]
    return header, rows


def text_table(header, rows):
    """The table as aligned text: names and settings to the left, numbers to the right."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    left = len(header) - len(RESULTS)

    def line(cells):
        return "  ".join(cell.ljust(w) if i < left else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def page(runs):
    """The comparison page's XHTML, as a string."""
    header, rows = table(runs)
    shared = [f"{key}: {value}" for key, value in runs[0].settings.items()
              if len({str(run.settings.get(key)) for run in runs}) == 1]
    logs = dict(zip(names([run.dir for run in runs]), (run.log for run in runs)))
    cells = "".join(f"<th>{esc(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    sections = [f"<h1>microgpt: {len(runs)} runs compared</h1>",
                f'<div style="overflow-x:auto"><table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody>'
                "</table></div>",
                "<p>The settings that differ, the best held-out loss (and its difference from the first run's), the "
                "steps taken and the wall time (training and evaluations).</p>",
                "<h2>Loss</h2>", loss_chart(logs), "<h2>Training health</h2>", *health_charts(logs),
                "<h2>Settings every run shares</h2>", f"<pre>{esc(chr(10).join(shared))}</pre>"]
    return xhtml_page("microgpt: runs compared", sections,
                      "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}")


def compare_command(args):
    if len(args.runs) < 2:
        raise UserError("give at least two run directories to compare")
    paths = [os.path.realpath(run_dir) for run_dir in args.runs]
    for i, path in enumerate(paths):
        if path in paths[:i]:
            raise UserError(f"{args.runs[paths.index(path)]} and {args.runs[i]} are the same run; give each run once")
    runs = [Run(run_dir) for run_dir in args.runs]
    sys.stdout.write(text_table(*table(runs)) + "\n")
    html = page(runs)
    try:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(html)
    except OSError as e:
        raise UserError(f"cannot write {args.out}: {e.strerror}; choose another --out") from None
    sys.stdout.write(f"wrote {args.out} ({len(html):,} bytes); open it in a browser\n")

"""A run's log.jsonl, read back and drawn: what `report` (one run) and `compare` (several) show of a run's history.

train appends one JSON object per logged step (step, train loss and its moving average, lr, gradient norm,
ms/step, tokens/s, the training health of microgpt/health.py) and one per evaluation (step, held-out loss), each with
the seconds the run had taken (elapsed; None for a run begun before microgpt kept time).
"""
import json
import os

from microgpt.charts import Series, line_chart
from microgpt.errors import UserError


class Log:
    """The records of one run's log.jsonl, by kind."""

    def __init__(self, run_dir):
        path = os.path.join(run_dir, "log.jsonl")
        if not os.path.isfile(path):
            raise UserError(f"no log.jsonl in {run_dir}; give a run directory that train wrote")
        records = []
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except (ValueError, RecursionError):
                    record = None
                if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                    raise UserError(f"{path}, line {number}, is not a record that train writes (was the file "
                                    "cut or edited?); delete that line, or give another run")
                records.append(record)
        self.steps = [r for r in records if "train_loss" in r]  # the logged steps
        self.evaluations = [r for r in records if "held_out_loss" in r]
        self.health = [r for r in self.steps if r.get("health")]
        self.elapsed = records[-1].get("elapsed") if records else None  # seconds, at the last record


def loss_chart(runs):
    """The train loss (moving average) and held-out loss of runs {name: Log}, each run's two curves in one colour,
    held-out dashed (a name of "" for a single run)."""
    series = []
    for i, (name, log) in enumerate(runs.items()):
        prefix = f"{name}: " if name else ""
        series += [Series(f"{prefix}train (avg)", [(r["step"], r["train_loss_smooth"]) for r in log.steps], i),
                   Series(f"{prefix}held-out", [(r["step"], r["held_out_loss"]) for r in log.evaluations], i,
                          dashed=True)]
    return line_chart("loss (nats per token)", series, y_label="loss")


def health_charts(runs):
    """The health charts of runs {name: Log}: the gradient norm; with one run, the update/weight of each tensor and the
    dead ReLUs of each layer; with several, their dead ReLUs' mean over the layers (a model without its MLP has none).
    The runs that logged no health are left out."""
    runs = {name: log for name, log in runs.items() if log.health}
    if not runs:
        return []

    charts = [line_chart("gradient norm (before clipping)", [
        Series(name or "all weights", [(r["step"], r["health"]["grad_norm"]) for r in log.health])
        for name, log in runs.items()], log_y=True, y_label="norm")]
    if len(runs) == 1:
        (log,) = runs.values()
        charts.append(line_chart("update / weight, per tensor", [
            Series(tensor, [(r["step"], r["health"]["tensors"][tensor]["update_ratio"]) for r in log.health])
            for tensor in log.health[-1]["health"]["tensors"]], log_y=True, y_label="|Δw| / |w|"))
    if len(runs) == 1:  # each layer's dead ReLUs; of several runs, the mean over each run's layers
        dead = [Series(f"layer {li}", [(r["step"], r["health"]["layers"][li]["dead_relu"]) for r in log.health])
                for li in range(len(log.health[-1]["health"]["layers"] or []))]
    else:
        dead = [Series(name, [(r["step"], mean_dead(r["health"]["layers"])) for r in log.health])
                for name, log in runs.items()]
    if any(y is not None for s in dead for _, y in s.points):
        title = "dead ReLUs, per layer" if len(runs) == 1 else "dead ReLUs, mean over the layers"
        charts.append(line_chart(f"{title} (fraction)", dead, y_label="fraction"))
    return charts


def mean_dead(layers):
    """The mean fraction of dead ReLUs over a step's layers (None: no ReLU, or no layer health)."""
    found = [layer["dead_relu"] for layer in layers or [] if layer["dead_relu"] is not None]
    return sum(found) / len(found) if found else None

"""A run's log.jsonl, read back and drawn: what `report` (one run) and `compare` (several) show of a run's history.

train appends one JSON object per logged step (step, train loss and its moving average, lr, gradient norm,
ms/step, tokens/s, the training health of microgpt/health.py) and one per evaluation (step, held-out loss), each with
the seconds the run had taken (elapsed; None for a run begun before microgpt kept time). Log reads the parts that
are drawn, each checked: a line that is not what train writes is one error that names it, never a traceback.
"""
import json
import os
from typing import NamedTuple

from microgpt.charts import Series, line_chart
from microgpt.errors import UserError


class Health(NamedTuple):
    """The drawn part of one logged step's health."""
    step: int
    grad_norm: float
    update_ratios: dict  # {tensor: |Δw| / |w|}
    activation_rms: list  # per layer
    dead_relu: list  # per layer: a fraction, or None (no ReLU)
    warnings: list


def number(x, none=False):
    """x if it is a number (or None, where that is allowed), else TypeError."""
    if (x is None and none) or (isinstance(x, (int, float)) and not isinstance(x, bool)):
        return x
    raise TypeError(f"{x!r} is not a number")


class Log:
    """The records of one run's log.jsonl: the moving-average train loss and the held-out loss, each [(step, loss)],
    the health of the logged steps, the tokens per second of each logged step, the seconds the run had taken at each
    evaluation ({step: seconds or None}) and at its last record."""

    def __init__(self, run_dir):
        path = os.path.join(run_dir, "log.jsonl")
        if not os.path.isfile(path):
            raise UserError(f"no log.jsonl in {run_dir}; give a run directory that train wrote")
        self.train, self.held_out, self.health, self.elapsed = [], [], [], None
        self.tokens_per_s, self.evaluated_at = [], {}
        with open(path, encoding="utf-8", errors="replace") as f:
            for line_number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        self._add(json.loads(line))
                    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
                        raise UserError(f"{path}, line {line_number}, is not a record that train writes (was the file "
                                        "cut or edited?); delete that line, or give another run") from None

    def _add(self, record):
        step = record["step"]
        if not isinstance(step, int) or isinstance(step, bool):
            raise TypeError("step")
        if "train_loss" in record:
            self.train.append((step, number(record["train_loss_smooth"])))
            self.tokens_per_s.append(number(record["tokens_per_s"]))
        if "held_out_loss" in record:
            self.held_out.append((step, number(record["held_out_loss"])))
            self.evaluated_at[step] = number(record.get("elapsed"), none=True)
        health = record.get("health")
        if health:
            layers = health["layers"] or []
            self.health.append(Health(step, number(health["grad_norm"]),
                                      {name: number(t["update_ratio"]) for name, t in health["tensors"].items()},
                                      [number(layer["activation_rms"]) for layer in layers],
                                      [number(layer["dead_relu"], none=True) for layer in layers],
                                      [str(w) for w in health["warnings"]]))
        self.elapsed = number(record.get("elapsed"), none=True)

    def time_to(self, target):
        """The seconds the run had taken when an evaluation first gave a held-out loss of `target` or less (None: never,
        or the time was not kept)."""
        return next((self.evaluated_at[step] for step, loss in self.held_out if loss <= target), None)


def loss_chart(runs):
    """The train loss (moving average) and held-out loss of runs {name: Log}, each run's two curves in one colour,
    held-out dashed (a name of "" for a single run)."""
    series = []
    for i, (name, log) in enumerate(runs.items()):
        prefix = f"{name}: " if name else ""
        series += [Series(f"{prefix}train (avg)", log.train, i), Series(f"{prefix}held-out", log.held_out, i,
                                                                         dashed=True)]
    return line_chart("loss (nats per token)", series, y_label="loss")


def health_charts(runs):
    """The health charts of runs {name: Log}: the gradient norm; with one run, the update/weight of each tensor and the
    dead ReLUs of each layer; with several, their dead ReLUs' mean over the layers (a model without a ReLU has none).
    The runs that logged no health are left out."""
    runs = {name: log for name, log in runs.items() if log.health}
    if not runs:
        return []
    charts = [line_chart("gradient norm (before clipping)", [
        Series(name or "all weights", [(h.step, h.grad_norm) for h in log.health]) for name, log in runs.items()],
        log_y=True, y_label="norm")]
    if len(runs) == 1:  # each tensor's update/weight and each layer's dead ReLUs
        (log,) = runs.values()
        charts.append(line_chart("update / weight, per tensor", [
            Series(tensor, [(h.step, h.update_ratios.get(tensor)) for h in log.health])
            for tensor in log.health[-1].update_ratios], log_y=True, y_label="|Δw| / |w|"))
        dead = [Series(f"layer {li}", [(h.step, h.dead_relu[li] if li < len(h.dead_relu) else None)
                                       for h in log.health]) for li in range(len(log.health[-1].dead_relu))]
    else:  # of several runs, the mean over each run's layers
        dead = [Series(name, [(h.step, mean_dead(h.dead_relu)) for h in log.health]) for name, log in runs.items()]
    if any(y is not None for s in dead for _, y in s.points):
        title = "dead ReLUs, per layer" if len(runs) == 1 else "dead ReLUs, mean over the layers"
        charts.append(line_chart(f"{title} (fraction)", dead, y_label="fraction"))
    return charts


def mean_dead(fractions):
    """The mean fraction of dead ReLUs over a step's layers (None: the model has no ReLU, or no layer health)."""
    found = [x for x in fractions if x is not None]
    return sum(found) / len(found) if found else None

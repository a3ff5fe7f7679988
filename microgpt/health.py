"""Training health: the numbers that tell a run is going wrong before its loss does.

On every logged step (train --log-every) the engine measures, in its own arithmetic (engines/base.py, health), and
the trainer writes into the run's log.jsonl:
  per weight tensor   the gradient's norm (before clipping), the update's size relative to the weight (|Δw| / |w|;
                      about 1e-3 is healthy for Adam, far above it means the step is too big) and the weights' RMS
  per layer           the RMS of the residual stream leaving it, and the fraction of dead ReLUs (units of mlp_fc1
                      that are off for every position of the step's first sequence; None without a ReLU)
and this file turns them into a warning line, with the step, when something goes wrong: a value that is not finite
(naming the first intermediate where it appears), a gradient norm ten times its recent median, or attention that
has collapsed (a head whose every query puts more than 99% of its weight on one key).
"""
import math
import statistics

EXPLODING = 10.0  # a gradient norm this many times its recent median is a warning
COLLAPSED = 0.99  # a head whose queries all put at least this much on one key has collapsed


class Monitor:
    """Keeps the recent gradient norms and turns one logged step's health into warnings."""

    def __init__(self):
        self.norms = []

    def warnings(self, step, stats):
        """Warning lines for the health `stats` of step `step` (what Engine.health returns)."""
        found = []
        if stats["non_finite"]:
            found.append(f"a value that is not finite first appears in {stats['non_finite']}")
        for layer, head in stats["collapsed"]:
            found.append(f"attention collapsed in layer {layer}, head {head} (every query on one key)")
        total, recent = stats["grad_norm"], self.norms[-20:]
        if len(recent) >= 3 and total > EXPLODING * statistics.median(recent):
            found.append(f"the gradient norm {total:.3g} is over {EXPLODING:g}x its recent median "
                         f"{statistics.median(recent):.3g}")
        if math.isfinite(total):
            self.norms.append(total)
        return [f"warning: step {step}: {text}" for text in found]


def summary(stats):
    """One line for --health: the gradient norm, the largest update/weight, and per layer the stream's RMS and the
    dead ReLUs."""
    tensors = stats["tensors"]
    worst = max(tensors, key=lambda name: tensors[name]["update_ratio"])
    line = (f"  health: gradient norm {stats['grad_norm']:.3g}; largest update/weight "
            f"{tensors[worst]['update_ratio']:.2e} ({worst})")
    if stats["layers"]:
        line += "; per layer activation rms " + ", ".join(f"{x['activation_rms']:.2f}" for x in stats["layers"])
        if stats["layers"][0]["dead_relu"] is not None:  # (a model without its MLP has no ReLU)
            line += ", dead relu " + ", ".join(f"{x['dead_relu']:.0%}" for x in stats["layers"])
    return line

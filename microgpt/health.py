"""Training health: the numbers that tell a run is going wrong before its loss does.

On every logged step (train --log-every) the trainer records, into the run's log.jsonl:
  per weight tensor   the gradient's norm, the update's size relative to the weight (|Δw| / |w|; about 1e-3
                      is healthy for Adam, far above it means the step is too big) and the weights' RMS
  per layer           the RMS of the residual stream leaving it, and the fraction of dead ReLUs (units of
                      mlp_fc1 that are off for every position of the step's first sequence)
and it prints a warning line, with the step, when something goes wrong: a value that is not finite
(naming the first intermediate where it appears), a gradient norm ten times its recent median, or
attention that has collapsed (a head whose every query puts more than 99% of its weight on one key).
"""
import math
import statistics

EXPLODING = 10.0  # a gradient norm this many times its recent median is a warning
COLLAPSED = 0.99  # a head whose queries all put at least this much on one key has collapsed


def norm(values):
    return math.sqrt(sum(x * x for x in values))


def flat(value):
    """The numbers of a nested list, in order (None, a masked entry, left out)."""
    if isinstance(value, list):
        for x in value:
            yield from flat(x)
    elif value is not None:
        yield value


def tensor_stats(before, after, grads):
    """{name: {grad_norm, update_ratio, weight_rms}} from the weights before and after a step (flat
    sequences by name) and the step's gradients (matrices by name)."""
    stats = {}
    for name, grad in grads.items():
        w0, w1 = list(before[name]), list(after[name])
        update = norm([b - a for a, b in zip(w0, w1)])
        stats[name] = {"grad_norm": norm(list(flat(grad))), "update_ratio": update / (norm(w0) or 1.0),
                       "weight_rms": norm(w0) / math.sqrt(len(w0))}
    return stats


def layer_stats(record, n_layer):
    """[{activation_rms, dead_relu}] per layer, from one traced sequence (microgpt/trace.py's names)."""
    layers = []
    for li in range(n_layer):
        stream = list(flat(record[f"layer{li}.mlp.residual"]))
        relu = record[f"layer{li}.mlp.relu"]  # (T, 4C)
        dead = sum(1 for unit in zip(*relu) if not any(unit)) / len(relu[0])
        layers.append({"activation_rms": norm(stream) / math.sqrt(len(stream)), "dead_relu": dead})
    return layers


def first_non_finite(record):
    """The name of the first intermediate, in the order computed, that holds a NaN or an infinity."""
    for name, value in record.items():
        if name.endswith("attn.scores"):
            continue  # the masked future is -inf by design
        if any(not math.isfinite(x) for x in flat(value)):
            return name
    return None


def collapsed_heads(record, n_layer):
    """(layer, head) of every head whose queries that see at least two keys all put COLLAPSED on one."""
    found = []
    for li in range(n_layer):
        for h, weights in enumerate(record[f"layer{li}.attn.weights"]):
            rows = [row for i, row in enumerate(weights) if i >= 1]
            if rows and all(max(row) >= COLLAPSED for row in rows):
                found.append((li, h))
    return found


class Monitor:
    """Keeps the recent gradient norms and turns one logged step's numbers into warnings."""

    def __init__(self):
        self.norms = []

    def warnings(self, step, total_norm, record, n_layer):
        found = []
        if record is not None:
            bad = first_non_finite(record)
            if bad:
                found.append(f"a value that is not finite first appears in {bad}")
            for li, h in collapsed_heads(record, n_layer):
                found.append(f"attention collapsed in layer {li}, head {h} (every query on one key)")
        if len(self.norms) >= 3 and total_norm > EXPLODING * statistics.median(self.norms[-20:]):
            found.append(f"the gradient norm {total_norm:.3g} is over {EXPLODING:g}x its recent median "
                         f"{statistics.median(self.norms[-20:]):.3g}")
        if math.isfinite(total_norm):
            self.norms.append(total_norm)
        return [f"warning: step {step}: {text}" for text in found]

"""`check`: the proof table a user can run on their own machine.

Row by row: the scalar reference's gradient against central finite differences, then, for every installed engine
against the scalar reference from identical weights, the largest differences in the logits, the loss, each
gradient tensor and a 20-step Adam trajectory, each with its tolerance and PASS or FAIL. The exit code is 1 if any
row fails. The tolerances are the test suite's (tests/test_engines.py says why). A model trained with ablations is
checked the same way with the python engine as the reference (the scalar engine, the atomic file, has every
piece), as tests/test_ablations.py does.
"""
import random
import sys
from array import array

from microgpt import atomic, engines
from microgpt.ablations import describe
from microgpt.datasets import Dataset
from microgpt.initialisation import reference_weights
from microgpt.layout import param_count, segments, split
from microgpt.loading import open_model

H = 1e-6  # finite-difference step: truncation ~H^2, rounding ~1e-16/H, both far below the tolerance
TOLERANCE = {"finite differences": 1e-6, "logits": 1e-12, "loss": 1e-12, "gradient": 1e-12, "adam": 1e-10}
FAST_ENOUGH = 20_000  # parameters up to which the finite differences use the reference engine's own loss


def max_relative_difference(got, want, floor=0.0):
    """max |got - want| over two flat sequences, relative to the largest |want|, or to `floor` when that is larger
    (absolute when both are 0)."""
    return max_absolute_difference(got, want) / (max(floor, *(abs(x) for x in want)) or 1.0)


def max_absolute_difference(got, want):
    return max(abs(a - b) for a, b in zip(got, want))


def finite_difference_rows(cfg, weights, batch, per_tensor, rng, reference="scalar", ablations=()):
    """The reference's gradient of up to per_tensor weights of each tensor against (f(w+h) - f(w-h)) / 2h."""
    engine = engines.create(reference, cfg, weights, ablations=ablations)
    engine.loss_and_grads(batch)
    grads, weights = engine.gradients(), array("d", weights)
    loss_engine = engines.fastest() if param_count(cfg) > FAST_ENOUGH else reference
    rows = []
    for name, (start, shape) in segments(cfg).items():
        size, worst_abs, worst_rel = shape[0] * shape[1], 0.0, 0.0
        for i in rng.sample(range(start, start + size), min(per_tensor, size)):
            x, values = weights[i], []
            for shifted in (x + H, x - H):
                weights[i] = shifted
                values.append(engines.create(loss_engine, cfg, weights, ablations=ablations).loss(batch))
            weights[i] = x
            numerical = (values[0] - values[1]) / (2 * H)
            error = abs(grads[i] - numerical)
            worst_abs, worst_rel = max(worst_abs, error), max(worst_rel, error / max(1.0, abs(numerical)))
        rows.append(("finite differences", f"d loss / d {name}", worst_abs, worst_rel))
    return rows, loss_engine


def run_engine(name, cfg, weights, batch, ablations=(), steps=20):
    """What the rows compare: logits of one sequence, loss and gradients of the batch, a loss trajectory."""
    engine = engines.create(name, cfg, weights, ablations=ablations)
    seq = batch[0][:cfg.block_size]
    logits = [x for row in engine.forward(seq, engine.new_cache()) for x in row]
    loss = engine.loss_and_grads(batch)
    grads = engine.gradients().tolist()
    trajectory = []
    for step in range(steps):
        trajectory.append(engine.loss_and_grads(batch))
        engine.adam_step(step, lr_t=0.01 * (1 - step / steps))
    return logits, loss, grads, trajectory


def engine_rows(name, cfg, result, reference):
    (logits, loss, grads, trajectory), (want_logits, want_loss, want_grads, want_trajectory) = result, reference
    rows = [("logits", f"{name}: logits", max_absolute_difference(logits, want_logits),
             max_relative_difference(logits, want_logits)),
            ("loss", f"{name}: loss", abs(loss - want_loss), abs(loss - want_loss) / abs(want_loss))]
    # a tensor whose gradient is tiny beside the largest (queries that see one key or two; the lower blocks of a model
    # without its residual stream) is cancellation of far larger terms: measured against 1e-5 of the largest, as the
    # tests measure it (tests/test_engines.py)
    floor = 1e-5 * max(abs(x) for x in want_grads)
    for (tensor, (_, got)), (_, want) in zip(split(grads, cfg).items(), split(want_grads, cfg).values()):
        rows.append(("gradient", f"{name}: d loss / d {tensor}", max_absolute_difference(got, want),
                     max_relative_difference(got, want, floor)))
    worst = max(abs(a - b) for a, b in zip(trajectory, want_trajectory))
    rows.append(("adam", f"{name}: {len(trajectory)} Adam steps, loss", worst, worst))
    return rows


def check_command(args):
    rng = random.Random(args.seed)
    if args.source:
        model, tok, meta, path = open_model(args.source, "python")
        cfg, weights, ablations = model.cfg, model.weights(), tuple(meta["settings"]["ablate"])
        what = f"{path} (step {meta['step']}{f', {describe(ablations)}' if ablations else ''})"
    else:
        data_rng = random.Random(42)
        tok = Dataset("names", None, data_rng).tokenizer
        cfg = atomic.GPTConfig(vocab_size=tok.vocab_size)
        weights, what = reference_weights(cfg, data_rng), "a fresh model (the reference's size and initialisation)"
        ablations = ()
    reference = "python" if ablations else "scalar"
    bos = tok.bos
    batch = [[bos] + [rng.randrange(bos) for _ in range(rng.randint(2, 8))] + [bos] for _ in range(2)]
    w = sys.stdout
    w.write(f"check of {what}: {param_count(cfg):,} parameters, a batch of 2 random documents\n")
    rows, loss_engine = finite_difference_rows(cfg, weights, batch, args.per_tensor, rng, reference, ablations)
    w.write(f"finite differences of the {reference} engine's gradient: {args.per_tensor} weights per tensor, "
            f"h = {H}, the loss from the {loss_engine} engine\n")
    want = run_engine(reference, cfg, weights, batch, ablations)
    for name in engines.installed():
        if name not in ("scalar", reference):
            rows += engine_rows(name, cfg, run_engine(name, cfg, weights, batch, ablations), want)
    w.write(f"{'what':<46}{'max abs':>11}{'max rel':>11}{'tolerance':>11}  result\n")
    failed = 0
    for kind, label, absolute, relative in rows:
        ok = relative <= TOLERANCE[kind]
        failed += not ok
        w.write(f"{label:<46}{absolute:>11.2e}{relative:>11.2e}{TOLERANCE[kind]:>11.0e}  {'PASS' if ok else 'FAIL'}\n")
    w.write(f"{len(rows) - failed} of {len(rows)} rows pass\n")
    return 1 if failed else 0

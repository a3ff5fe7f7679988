"""Every engine computes the scalar reference's numbers: from identical weights, the same logits, loss, gradients
and Adam trajectory, for many small shapes; and the whole reference run, name for name. Also the interface itself:
the python and numpy engines name and shape their operations alike, and state leaves every engine as flat arrays.

Tolerance: all engines work in float64 and differ from the reference only in the order in which they add things up
(numpy's pairwise sums, the gradient of a shared value summed in another order). Each reordering moves a result by
a few units in the last place (~1e-16 relative) and a forward/backward pass stacks a few hundred of them, so 1e-12
relative to a tensor's largest entry leaves a wide margin while any wrong formula shows up at 1e-6 or worse. Adam
divides by sqrt(v), which amplifies differences in tiny gradients, hence 1e-10 on a 20-step loss trajectory."""
import importlib
import inspect
import random
import shutil
import sys
from array import array

import pytest
from conftest import ROOT, microgpt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microgpt import atomic, engines
from microgpt.engines import python as python_engine
from microgpt.initialisation import reference_weights
from microgpt.layout import param_count, segments

FAST = [pytest.param(name, marks=pytest.mark.skipif(name not in engines.installed(), reason=f"no {name}"))
        for name in engines.ENGINES if name != "scalar"]


def max_relative_difference(got, want):
    """max |got - want| over two matrices (lists of rows), relative to the largest |want| (absolute when it is 0)."""
    scale = max(abs(x) for row in want for x in row) or 1.0
    return max(abs(a - b) for r1, r2 in zip(got, want) for a, b in zip(r1, r2)) / scale


def per_tensor(flat, cfg):
    """A flat array (P,) as {name: [the tensor's values]}, to compare tensor by tensor."""
    return {name: [float(x) for x in flat[start:start + rows * cols]]
            for name, (start, (rows, cols)) in segments(cfg).items()}


def worst_tensor(got, want, cfg):
    """(name, difference) of the tensor whose values differ most, relative to its largest entry, or to 1e-5 of the
    largest entry of all when that is larger: a tensor whose every entry is far smaller than the rest is mostly
    cancellation (the queries' gradient when queries see one key or two: a softmax over one score has none), and
    its rounding is that of the larger terms that cancel (seen: 1.2e-19 absolute on entries of 9e-8). Absolute when
    every gradient is 0 (dropout can zero a whole batch's stream)."""
    floor = 1e-5 * max(abs(float(x)) for x in want) or 1.0
    got, want = per_tensor(got, cfg), per_tensor(want, cfg)
    differences = {name: max(abs(a - b) for a, b in zip(got[name], want[name]))
                   / max(max(map(abs, want[name])), floor) for name in want}
    worst = max(differences, key=differences.get)
    return worst, differences[worst]


@st.composite
def models_and_batches(draw):
    n_head = draw(st.integers(1, 3))
    # n_embd >= 4: in narrower models the gradients of rmsnorm and of the attention logits are mostly
    # cancellation (with one channel rmsnorm outputs +-1 whatever its input; two keys compete through a
    # difference of two nearly equal terms), and the last digits they keep differ with summation order
    cfg = atomic.GPTConfig(vocab_size=draw(st.integers(2, 7)), block_size=draw(st.integers(1, 6)),
                           n_layer=draw(st.integers(1, 2)), n_embd=max(4, n_head * draw(st.integers(2, 4))),
                           n_head=n_head)
    bos = cfg.vocab_size - 1
    # documents from 0 characters (just [BOS, BOS]) to longer than the block (cut to block_size + 1)
    lengths = draw(st.lists(st.integers(0, cfg.block_size + 2), min_size=1, max_size=3))
    batch = [[bos] + [draw(st.integers(0, bos)) for _ in range(n)] + [bos] for n in lengths]
    return cfg, batch, draw(st.integers(0, 2**16))


@pytest.mark.parametrize("name", FAST)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=models_and_batches())
def test_engine_matches_reference_logits_loss_and_every_gradient(name, case):
    cfg, batch, seed = case
    weights = reference_weights(cfg, random.Random(seed))
    reference, engine = engines.create("scalar", cfg, weights), engines.create(name, cfg, weights)
    seq = batch[-1][:cfg.block_size]
    logits = max_relative_difference(engine.forward(seq, engine.new_cache()),
                                     reference.forward(seq, reference.new_cache()))
    assert logits <= 1e-12, f"logits differ by {logits:.2e}"
    want, got = reference.loss_and_grads(batch), engine.loss_and_grads(batch)
    assert abs(got - want) <= 1e-12 * abs(want), f"loss {got!r} vs reference {want!r}"
    tensor, difference = worst_tensor(engine.gradients(), reference.gradients(), cfg)
    assert difference <= 1e-12, f"{tensor} gradient differs by {difference:.2e}"


@pytest.mark.parametrize("name", FAST)
def test_twenty_adam_steps_follow_the_reference_trajectory(name):
    cfg = atomic.GPTConfig(vocab_size=6, block_size=5, n_layer=2, n_embd=6, n_head=2)
    weights = reference_weights(cfg, random.Random(3))
    rng = random.Random(4)
    batches = [[[5] + [rng.randrange(5) for _ in range(rng.randrange(7))] + [5] for _ in range(2)]
               for _ in range(20)]
    trajectories = []
    for engine in (engines.create("scalar", cfg, weights), engines.create(name, cfg, weights)):
        losses = []
        for step, batch in enumerate(batches):
            losses.append(engine.loss_and_grads(batch))
            engine.clip_grads(0.5)  # clipping and AdamW's weight decay are held to the reference too
            engine.adam_step(step, lr_t=0.01 * (1 - step / 20), weight_decay=0.1)
        trajectories.append((losses, engine.weights(), engine.moments()))
    (want, want_weights, want_moments), (got, got_weights, got_moments) = trajectories
    worst = max(abs(a - b) for a, b in zip(got, want))
    assert worst <= 1e-10, f"max loss difference over 20 steps {worst:.2e}: {got} vs {want}"
    for got_flat, want_flat in zip((got_weights, *got_moments), (want_weights, *want_moments)):
        assert worst_tensor(got_flat, want_flat, cfg)[1] <= 1e-10


@pytest.mark.parametrize("name", ["scalar", *FAST])
def test_key_value_cache_gives_the_logits_of_a_full_forward_pass(name):
    cfg = atomic.GPTConfig(vocab_size=6, block_size=6, n_layer=2, n_embd=8, n_head=2)
    engine = engines.create(name, cfg, reference_weights(cfg, random.Random(5), std=0.5))
    tokens = [5, 0, 3, 3, 1, 2]
    full = engine.forward(tokens, engine.new_cache())
    cache = engine.new_cache()
    one_by_one = [engine.forward([t], cache)[0] for t in tokens[:2]] + engine.forward(tokens[2:], cache)
    assert max_relative_difference(one_by_one, full) <= 1e-14


STORAGE = {"scalar": "array", "python": "array", "numpy": "ndarray", "torch": "ndarray"}


@pytest.mark.parametrize("name", ["scalar", *FAST])
def test_state_leaves_every_engine_as_flat_arrays_in_the_reference_order(name):
    cfg = atomic.GPTConfig(vocab_size=5, block_size=4, n_layer=2, n_embd=8, n_head=2)
    weights = reference_weights(cfg, random.Random(6))
    engine = engines.create(name, cfg, weights)
    engine.loss_and_grads([[4, 0, 1, 2, 4]])
    engine.adam_step(0, 0.01)
    m, v = engine.moments()
    for flat in (engine.weights(), engine.gradients(), m, v):
        assert type(flat).__name__ == STORAGE[name] and len(flat) == param_count(cfg)
        assert memoryview(flat).format == "d" and memoryview(flat).ndim == 1  # float64 bytes, for a checkpoint
    fresh = engines.create(name, cfg, engine.weights())  # weights out of one engine are weights into another
    fresh.load_state(engine.weights(), m, v)
    assert list(fresh.weights()) == list(engine.weights()) and list(fresh.moments()[1]) == list(v)


@pytest.mark.skipif("torch" not in engines.installed(), reason="no torch")
def test_torch_hands_out_its_cpu_tensors_buffers_without_a_copy():
    cfg = atomic.GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_embd=8, n_head=2)
    engine = engines.create("torch", cfg, reference_weights(cfg, random.Random(6)), device="cpu")
    weights = engine.weights()
    engine.p.add_(1.0)  # a change in the engine ...
    assert weights[0] == float(engine.p[0])  # ... is seen through the array it handed out: the same memory


@pytest.mark.parametrize("name", [p for p in FAST if p.values[0] != "python"])
def test_python_and_array_engines_lay_side_by_side_function_for_function(name):
    # the *_forward / *_backward pairs (and the helpers they share) have the same names and parameters, so that
    # python.py and numpy.py (and what torch.py writes by hand) diff cleanly
    module = importlib.import_module(f"microgpt.engines.{name}")
    pairs = sorted(n for n in vars(python_engine) if n.endswith(("_forward", "_backward")))
    assert len(pairs) == 14  # embedding, rmsnorm, linear, relu, dropout, attention, cross_entropy
    if name == "numpy":
        assert sorted(n for n in vars(module) if n.endswith(("_forward", "_backward"))) == pairs
    shared = [*pairs, "rms_scale", "adam_update", "softmax"] if name == "numpy" else ["adam_update", "softmax"]
    # where they differ, and why: numpy's attention pads a batch's documents to one length, which attention that is
    # not causal must hide (`padding`); its backward reads the mask from the weights (0 where hidden), where
    # python's loops must know how many keys each query saw (`causal`)
    differs = {"attention_forward": ({"padding"}, set()), "attention_backward": (set(), {"causal"})}
    for function in shared:
        extra, missing = differs.get(function, (set(), set())) if name == "numpy" else (set(), set())
        params, python_params = (list(inspect.signature(getattr(m, function)).parameters)
                                 for m in (module, python_engine))
        assert params == [p for p in python_params if p not in missing] + sorted(extra), function


def golden():
    return (ROOT / "tests" / "golden" / "reference_run.txt").read_text().splitlines()


PYPY = shutil.which("pypy3")


@pytest.mark.parametrize(("name", "python"), [
    *[pytest.param(*p.values, sys.executable, marks=p.marks, id=p.values[0]) for p in FAST],
    pytest.param("python", PYPY, id="python-pypy",
                 marks=pytest.mark.skipif(not PYPY, reason="no pypy3 on PATH (CI installs it)"))])
def test_reference_run_on_fast_engine_prints_every_golden_figure(name, python, tmp_path):
    result = microgpt("train", "--engine", name, "--log-every", 1, cwd=tmp_path, python=python)
    assert result.returncode == 0, result.stderr
    out, lines = result.stdout.splitlines(), golden()
    losses = [line.split("| loss ")[1][:6] for line in out if "| loss " in line]
    assert losses == [line.split("| loss ")[1] for line in lines if line.startswith("step")]
    samples = out[out.index("samples (temperature 0.5):") + 1:]
    assert [s.split(maxsplit=1)[1] if s.split()[1:] else "" for s in samples] == \
        [line.split(": ", 1)[1] for line in lines if line.startswith("sample")]


def test_engine_whose_packages_are_missing_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "numpy" else real(name, *a))
    assert "numpy" not in engines.installed()
    cfg = atomic.GPTConfig()
    with pytest.raises(engines.UserError, match="the numpy engine needs numpy: pip install numpy"):
        engines.create("numpy", cfg, array("d", [0.0]) * param_count(cfg))

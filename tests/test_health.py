"""Training health: each engine measures the same numbers in its own arithmetic; the warnings; the record every
logged step writes."""
import json
import math
import random

import pytest
from conftest import microgpt

from microgpt import atomic, engines, health
from microgpt.initialisation import reference_weights
from microgpt.layout import segments, split
from microgpt.trace import nested, trace

CFG = atomic.GPTConfig(vocab_size=5, block_size=6, n_layer=2, n_embd=8, n_head=2)
TRACED = [name for name in engines.installed() if name != "scalar"]


def norm(values):
    return math.sqrt(sum(x * x for x in values))


def step_with_health(name, tokens=(4, 0, 1, 3, 2)):
    """An engine after one clipped AdamW step, the weights before it, its gradients, and its health."""
    engine = engines.create(name, CFG, reference_weights(CFG, random.Random(1), std=0.5))
    engine.loss_and_grads([[4, 0, 1, 2, 3, 4], [4, 2, 4]])
    before, grads = list(engine.weights()), list(engine.gradients())
    snapshot = engine.health_snapshot()
    engine.clip_grads(0.1)
    engine.adam_step(0, 0.01, weight_decay=0.1)
    return engine, before, grads, engine.health(snapshot, list(tokens))


@pytest.mark.parametrize("name", engines.installed())
def test_tensor_statistics_are_what_their_names_say(name):
    engine, before, grads, stats = step_with_health(name)
    after = list(engine.weights())
    for tensor, (start, (rows, cols)) in segments(CFG).items():
        part = slice(start, start + rows * cols)
        w0, w1, g = before[part], after[part], grads[part]
        want = {"grad_norm": norm(g), "update_ratio": norm([b - a for a, b in zip(w0, w1)]) / norm(w0),
                "weight_rms": norm(w0) / math.sqrt(len(w0))}
        for key, value in want.items():
            assert math.isclose(stats["tensors"][tensor][key], value, rel_tol=1e-12), (tensor, key)
    assert math.isclose(stats["grad_norm"], norm(grads), rel_tol=1e-12)  # before clipping


@pytest.mark.parametrize("name", TRACED)
def test_layer_statistics_are_what_their_names_say(name):
    engine, _, _, stats = step_with_health(name)
    record = {key: nested(*value) for key, value in trace(engine, [4, 0, 1, 3, 2]).items()}
    for li, layer in enumerate(stats["layers"]):
        stream = [x for row in record[f"layer{li}.mlp.residual"] for x in row]
        relu = record[f"layer{li}.mlp.relu"]  # (T, 4C): a unit is dead when it is 0 at every position
        dead = sum(1 for unit in zip(*relu) if not any(unit)) / len(relu[0])
        assert math.isclose(layer["activation_rms"], norm(stream) / math.sqrt(len(stream)), rel_tol=1e-12)
        assert layer["dead_relu"] == dead
    assert stats["non_finite"] is None and stats["collapsed"] == []


def in_storage(name, nested):
    """Nested lists of floats as the engine `name` holds intermediates: NumPy arrays, torch tensors, or lists."""
    if name == "numpy":
        return pytest.importorskip("numpy").array(nested)
    if name == "torch":
        torch = pytest.importorskip("torch")
        return torch.tensor(nested, dtype=torch.float64)
    return nested


@pytest.mark.parametrize("name", engines.installed())
def test_each_engines_health_arithmetic_gives_the_known_answers(name):
    # the few reductions each engine writes in its own arithmetic (engines/base.py has the plain-Python ones)
    engine = engines.create(name, CFG, reference_weights(CFG, random.Random(0)))
    relu = [[0.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 1.0]]  # (T, 4C): units 0 and 2 are off at every position
    assert engine._dead(in_storage(name, relu)) == 0.5
    assert math.isclose(engine._rms(in_storage(name, [[3.0, 4.0]])), 5 / math.sqrt(2), rel_tol=1e-15)
    weights = [[[1.0, 0.0], [0.995, 0.005]], [[1.0, 0.0], [0.5, 0.5]]]  # (H, T, T): head 0 puts 99.5% on one key
    assert engine._collapsed(in_storage(name, weights)) == [0]
    scores = in_storage(name, [[0.5, -math.inf]])
    assert engine._finite(scores, masked=True) and not engine._finite(scores)  # -inf is a masked score only
    assert not engine._finite(in_storage(name, [[0.5, math.nan]]), masked=True)
    assert engine._norms(engine._copy(engine.p)) == pytest.approx([norm(part) for _, part in split(
        list(engine.weights()), CFG).values()], rel=1e-12)


def test_every_engine_measures_the_same_health():
    reference = step_with_health("python")[3]
    for name in TRACED:
        stats = step_with_health(name)[3]
        pairs = [*zip(stats["layers"], reference["layers"]),
                 *((stats["tensors"][tensor], reference["tensors"][tensor]) for tensor in reference["tensors"])]
        for got, want in pairs:
            assert got == pytest.approx(want, rel=1e-12), name


@pytest.mark.parametrize("name", TRACED)
def test_the_first_non_finite_value_is_named_in_forward_order(name):
    weights = reference_weights(CFG, random.Random(0))
    start, (_, cols) = segments(CFG)["layer1.mlp_fc1"]
    weights[start + 3 * cols + 2] = float("nan")  # row 3, column 2 of layer 1's mlp_fc1
    engine = engines.create(name, CFG, weights)
    assert engine.first_non_finite([4, 0, 1]) == "layer1.mlp.fc1"
    snapshot = engine.health_snapshot()
    assert engine.health(snapshot, [4, 0, 1])["non_finite"] == "layer1.mlp.fc1"


@pytest.mark.parametrize("name", TRACED)
def test_a_head_whose_queries_all_look_at_one_key_has_collapsed(name):
    # huge query and key weights make every score gap enormous: each softmax row becomes one-hot
    weights = reference_weights(CFG, random.Random(2))
    for tensor in ("layer0.attn_wq", "layer0.attn_wk"):
        start, (rows, cols) = segments(CFG)[tensor]
        for i in range(start, start + rows * cols):
            weights[i] *= 1e4
    engine = engines.create(name, CFG, weights)
    stats = engine.health(engine.health_snapshot(), [4, 0, 1, 3, 2])
    assert {(0, 0), (0, 1)} <= set(stats["collapsed"])


def test_warnings_for_collapse_non_finite_values_and_exploding_gradients():
    monitor = health.Monitor()
    quiet = {"grad_norm": 1.0, "non_finite": None, "collapsed": []}
    assert monitor.warnings(5, {**quiet, "collapsed": [(0, 1)]}) == [
        "warning: step 5: attention collapsed in layer 0, head 1 (every query on one key)"]
    assert monitor.warnings(6, {**quiet, "non_finite": "layer0.mlp.fc1"}) == [
        "warning: step 6: a value that is not finite first appears in layer0.mlp.fc1"]
    assert monitor.warnings(7, quiet) == []
    assert "gradient norm 50 is over 10x its recent median 1" in monitor.warnings(9, {**quiet, "grad_norm": 50.0})[0]


def test_every_logged_step_records_health(tmp_path):
    result = microgpt("train", "--steps", 20, "--log-every", 10, "--health", "--out", "r", "--n-layer", 2,
                      "--num-samples", 0, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("  health: gradient norm") == 2
    records = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    logged = [r for r in records if "health" in r]
    assert [r["step"] for r in logged] == [10, 20]
    tensors, layers = logged[-1]["health"]["tensors"], logged[-1]["health"]["layers"]
    assert list(tensors) == list(atomic.param_shapes(atomic.GPTConfig(n_layer=2)))
    assert all(0 < t["update_ratio"] < 1 and t["grad_norm"] > 0 for t in tensors.values())
    assert len(layers) == 2 and all(0 <= layer["dead_relu"] <= 1 for layer in layers)

"""The instruments: `check` passes on a correct engine and fails on a planted bug; `trace` names every intermediate
alike and with the same values on every engine, masked attention scores included; `attention` draws every head."""
import argparse
import json
import math
import random

import pytest
from conftest import microgpt

from microgpt import atomic, engines
from microgpt.check import check_command
from microgpt.engines.base import flatten
from microgpt.initialisation import reference_weights
from microgpt.sampling import softmax
from microgpt.trace import heat_map, nested, trace

TRACED = [name for name in engines.installed() if name != "scalar"]
CFG = atomic.GPTConfig(vocab_size=6, block_size=8, n_layer=2, n_embd=8, n_head=2)


def check(capsys, **overrides):
    args = argparse.Namespace(source=None, per_tensor=1, seed=0, **overrides)
    code = check_command(args)
    return code, capsys.readouterr().out


def test_check_passes_every_row_and_exits_0(capsys):
    code, out = check(capsys)
    rows = [line for line in out.splitlines() if line.endswith(("PASS", "FAIL"))]
    assert code == 0 and all(row.endswith("PASS") for row in rows)
    # 9 finite-difference rows, then per engine logits, loss, 9 gradients and the Adam trajectory
    assert len(rows) == 9 + 12 * len(TRACED) and out.endswith(f"{len(rows)} of {len(rows)} rows pass\n")


def test_check_fails_on_a_planted_bug(capsys, monkeypatch):
    numpy_engine = pytest.importorskip("microgpt.engines.numpy", reason="no numpy")
    correct = numpy_engine.rmsnorm_backward
    monkeypatch.setattr(numpy_engine, "rmsnorm_backward", lambda dy, x: correct(dy, x) * (1 + 1e-9))
    code, out = check(capsys)
    failing = [line for line in out.splitlines() if line.endswith("FAIL")]
    assert code == 1 and failing and all(line.startswith("numpy: ") for line in failing)


def traces(tokens):
    weights = reference_weights(CFG, random.Random(3), std=0.3)
    return {name: {key: nested(*value) for key, value in trace(engines.create(name, CFG, weights), tokens).items()}
            for name in TRACED}


EXPECTED = ["embedding", "embedding.norm"] + [f"layer{i}.{part}" for i in range(2) for part in (
    "attn.norm", "attn.q", "attn.k", "attn.v", "attn.scores", "attn.weights", "attn.heads", "attn.proj",
    "attn.residual", "mlp.norm", "mlp.fc1", "mlp.relu", "mlp.fc2", "mlp.residual")] + ["logits", "probs"]


def test_trace_names_and_values_agree_on_every_engine():
    records = traces([5, 0, 3, 3, 1])
    first = records[TRACED[0]]
    for name, record in records.items():
        assert list(record) == EXPECTED, name  # the names, in the order computed
        for key in EXPECTED:
            got, want = list(flatten(record[key])), list(flatten(first[key]))
            assert len(got) == len(want) and all(a == b for a, b in zip(got, want) if not math.isfinite(b))
            assert max(abs(a - b) for a, b in zip(got, want) if math.isfinite(b)) <= 1e-12, (name, key)


@pytest.mark.parametrize("name", TRACED)
def test_masked_scores_are_minus_infinity_and_their_weights_zero_on_every_engine(name):
    tokens = [5, 0, 3, 3, 1]
    record = traces(tokens)[name]
    for li in range(CFG.n_layer):
        for scores, weights in zip(record[f"layer{li}.attn.scores"], record[f"layer{li}.attn.weights"]):
            for i, (score_row, weight_row) in enumerate(zip(scores, weights)):  # query i sees keys 0 ... i
                assert all(math.isfinite(s) for s in score_row[:i + 1])
                assert score_row[i + 1:] == [-math.inf] * (len(tokens) - i - 1)
                assert weight_row[i + 1:] == [0.0] * (len(tokens) - i - 1) and abs(sum(weight_row) - 1) < 1e-12


@pytest.mark.parametrize("name", TRACED)
def test_the_traced_logits_are_the_forward_passs_and_probs_their_softmax(name):
    tokens = [5, 0, 3, 3, 1]
    engine = engines.create(name, CFG, reference_weights(CFG, random.Random(3), std=0.3))
    record = traces(tokens)[name]
    forward = engine.forward(tokens, engine.new_cache())
    assert max(abs(a - b) for a, b in zip(flatten(record["logits"]), flatten(forward))) <= 1e-12
    assert record["probs"] == [softmax(row, 1.0) for row in record["logits"]]


def test_trace_and_attention_commands(run):
    text = run("-m", "microgpt", "trace", "--prompt", "emma")
    assert text.returncode == 0, text.stderr
    assert "layer0.attn.weights head 3 (5, 5)" in text.stdout and "probs: the most likely" in text.stdout
    as_json = json.loads(run("-m", "microgpt", "trace", "--prompt", "em", "--json").stdout)
    assert as_json["tokens"] == ["BOS", "e", "m"] and len(as_json["intermediates"]["logits"]) == 3
    assert as_json["intermediates"]["layer0.attn.scores"][0][0][1:] == [None, None]  # masked: -inf, JSON null
    heat = run("-m", "microgpt", "attention", "--prompt", "emma")
    assert heat.returncode == 0 and heat.stdout.count("\nlayer 0, head ") == 4
    assert "cannot trace" in run("-m", "microgpt", "trace", "--engine", "scalar").stderr
    assert "never seen 'Z'" in run("-m", "microgpt", "attention", "--prompt", "Zoe").stderr


def test_heat_map_shades_by_weight():
    lines = heat_map([[1.0, 0.0], [0.5, 0.5]], ["BOS", "a"])
    assert lines[1].endswith("@  ") and lines[2].endswith("+ +")


def test_trace_of_a_trained_run_on_another_engine(tmp_path):
    assert microgpt("train", "--steps", 5, "--out", "run", "--num-samples", 0, cwd=tmp_path).returncode == 0
    result = microgpt("trace", "--from", "run", "--prompt", "an", "--engine", "python", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("trace of ['BOS', 'a', 'n'] on the python engine")

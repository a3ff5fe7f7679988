"""The instruments: `check` passes on a correct engine and fails on a planted bug; `trace` names every
intermediate alike and with the same values on every engine; `attention` draws every head."""
import argparse
import json
import math
import random

import pytest

from microgpt import atomic, engines
from microgpt.check import check_command
from microgpt.engines import numpy as numpy_engine
from microgpt.trace import heat_map

TRACED = [name for name in engines.installed() if name != "scalar"]


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


@pytest.mark.skipif("numpy" not in engines.installed(), reason="no numpy")
def test_check_fails_on_a_planted_bug(capsys, monkeypatch):
    correct = numpy_engine.rmsnorm_backward
    monkeypatch.setattr(numpy_engine, "rmsnorm_backward", lambda dy, x, s: correct(dy, x, s) * (1 + 1e-9))
    code, out = check(capsys)
    failing = [line for line in out.splitlines() if line.endswith("FAIL")]
    assert code == 1 and failing and all(line.startswith("numpy: ") for line in failing)


def traces(tokens):
    cfg = atomic.GPTConfig(vocab_size=6, block_size=8, n_layer=2, n_embd=8, n_head=2)
    weights = atomic.init_weights(cfg, random.Random(3), std=0.3)
    return {name: engines.create(name, cfg, weights).trace(tokens) for name in TRACED}


def flat(value):
    if isinstance(value, list):
        for x in value:
            yield from flat(x)
    else:
        yield value


def test_trace_names_and_values_agree_on_every_engine():
    tokens = [5, 0, 3, 3, 1]
    records = traces(tokens)
    first = records[TRACED[0]]
    expected = ["embedding", "embedding.norm"] + [f"layer{i}.{part}" for i in range(2) for part in (
        "attn.norm", "attn.q", "attn.k", "attn.v", "attn.scores", "attn.weights", "attn.heads", "attn.proj",
        "attn.residual", "mlp.norm", "mlp.fc1", "mlp.relu", "mlp.fc2", "mlp.residual")] + ["logits", "probs"]
    for name, record in records.items():
        assert sorted(record) == sorted(expected), name
        for key in expected:
            pairs = [(a, b) for a, b in zip(flat(record[key]), flat(first[key]))
                     if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
            assert pairs and max(abs(a - b) for a, b in pairs) <= 1e-12, (name, key)
    weights = first["layer1.attn.weights"]  # (H, T, T): causal rows that sum to one
    assert all(abs(sum(row) - 1) < 1e-12 and all(x == 0 for x in row[i + 1:]) for h in weights
               for i, row in enumerate(h))
    assert first["logits"][-1] == first["logits"][-1] and len(first["probs"]) == len(tokens)


def test_trace_and_attention_commands(run):
    text = run("-m", "microgpt", "trace", "--prompt", "emma")
    assert text.returncode == 0, text.stderr
    assert "layer0.attn.weights head 3 (5, 5)" in text.stdout and "probs: the most likely" in text.stdout
    as_json = json.loads(run("-m", "microgpt", "trace", "--prompt", "em", "--json").stdout)
    assert as_json["tokens"] == ["BOS", "e", "m"] and len(as_json["intermediates"]["logits"]) == 3
    heat = run("-m", "microgpt", "attention", "--prompt", "emma")
    assert heat.returncode == 0 and heat.stdout.count("\nlayer 0, head ") == 4
    assert "microgpt: error" in run("-m", "microgpt", "trace", "--engine", "scalar").stderr
    assert "never seen 'Z'" in run("-m", "microgpt", "attention", "--prompt", "Zoe").stderr


def test_heat_map_shades_by_weight():
    lines = heat_map([[1.0, 0.0], [0.5, 0.5]], ["BOS", "a"])
    assert lines[1].endswith("@  ") and lines[2].endswith("+ +")

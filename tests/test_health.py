"""Training health: the statistics, the warnings, and the record every logged step writes."""
import json
import math
import random

from microgpt import atomic, engines, health


def test_tensor_stats():
    stats = health.tensor_stats({"w": [3.0, 4.0]}, {"w": [3.0, 4.5]}, {"w": [[0.0, 2.0]]})
    assert stats["w"] == {"grad_norm": 2.0, "update_ratio": 0.1, "weight_rms": 5 / math.sqrt(2)}


def test_layer_stats_and_dead_relus():
    record = {"layer0.mlp.residual": [[3.0, 4.0]], "layer0.mlp.relu": [[0.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 1.0]]}
    assert health.layer_stats(record, 1) == [{"activation_rms": 5 / math.sqrt(2), "dead_relu": 0.5}]


def test_the_first_non_finite_value_is_named_in_forward_order():
    cfg = atomic.GPTConfig(vocab_size=5, block_size=4, n_layer=2, n_embd=8, n_head=2)
    weights = atomic.init_weights(cfg, random.Random(0))
    weights["layer1.mlp_fc1"][3][2] = float("nan")
    name = engines.fastest() if engines.fastest() != "scalar" else "python"
    record = engines.create(name, cfg, weights).trace([4, 0, 1])
    assert health.first_non_finite(record) == "layer1.mlp.fc1"


def test_collapsed_attention_and_exploding_gradients_warn():
    record = {"layer0.attn.weights": [[[1.0, 0.0], [0.995, 0.005]], [[1.0, 0.0], [0.5, 0.5]]],
              "embedding": [[1.0]]}
    monitor = health.Monitor()
    assert monitor.warnings(5, 1.0, record, 1) == [
        "warning: step 5: attention collapsed in layer 0, head 0 (every query on one key)"]
    for step in range(3):
        assert monitor.warnings(step, 1.0, None, 1) == []
    assert "gradient norm 50 is over 10x its recent median 1" in monitor.warnings(9, 50.0, None, 1)[0]


def test_every_logged_step_records_health(run, tmp_path):
    result = run("-m", "microgpt", "train", "--steps", 20, "--log-every", 10, "--health", "--out", tmp_path / "r",
                 "--n-layer", 2, "--num-samples", 0)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("  health: gradient norm") == 2
    records = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    logged = [r for r in records if "health" in r]
    assert [r["step"] for r in logged] == [10, 20]
    tensors, layers = logged[-1]["health"]["tensors"], logged[-1]["health"]["layers"]
    assert list(tensors) == list(atomic.param_shapes(atomic.GPTConfig(n_layer=2)))
    assert all(0 < t["update_ratio"] < 1 and t["grad_norm"] > 0 for t in tensors.values())
    assert len(layers) == 2 and all(0 <= layer["dead_relu"] <= 1 for layer in layers)

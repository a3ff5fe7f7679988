"""Learning-rate schedules: the reference's linear decay to the last bit, warmup, cosine."""
import math

from microgpt.config import TrainConfig
from microgpt.schedule import learning_rate


def test_linear_without_warmup_is_the_reference_expression():
    cfg = TrainConfig(steps=1000, lr=0.01)
    assert all(learning_rate(s, cfg) == 0.01 * (1 - s / 1000) for s in range(1000))


def test_warmup_rises_to_the_peak_then_decays():
    cfg = TrainConfig(steps=100, lr=0.1, warmup=10)
    assert [learning_rate(s, cfg) for s in (0, 4, 9)] == [0.1 * 1 / 10, 0.1 * 5 / 10, 0.1]
    assert learning_rate(10, cfg) == 0.1 and math.isclose(learning_rate(55, cfg), 0.05)


def test_cosine_falls_from_the_peak_to_its_floor():
    cfg = TrainConfig(steps=110, lr=1.0, warmup=10, schedule="cosine", min_lr_ratio=0.1)
    assert learning_rate(10, cfg) == 1.0
    assert math.isclose(learning_rate(60, cfg), 0.55)  # half way: the mean of peak and floor
    values = [learning_rate(s, cfg) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(values, values[1:])) and values[-1] > 0.1

"""The fast initialisation draws the reference's weights bit for bit: the same numbers as atomic.init_weights (one
random.gauss per weight) and the generator left in the same state, with NumPy and without it."""
import random
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microgpt import atomic
from microgpt.initialisation import reference_weights


def the_references(cfg, rng, std):
    """atomic.init_weights, flattened in the reference order: the definition."""
    return [x for matrix in atomic.init_weights(cfg, rng, std).values() for row in matrix for x in row]


@pytest.fixture(params=["numpy", "standard library"])
def draw(request, monkeypatch):
    if request.param == "numpy":
        pytest.importorskip("numpy")
    else:
        monkeypatch.setitem(sys.modules, "numpy", None)  # `import numpy` now fails: the plain loop
    return reference_weights


@settings(max_examples=40, deadline=None)
@given(n_layer=st.integers(1, 3), n_embd=st.sampled_from([2, 4, 6, 16]), vocab_size=st.integers(2, 30),
       block_size=st.integers(1, 17), std=st.sampled_from([0.08, 0.02, 1.0]), seed=st.integers(0, 2**32),
       drawn_before=st.integers(0, 3))
def test_the_same_numbers_and_the_same_generator_state_as_init_weights(n_layer, n_embd, vocab_size, block_size, std,
                                                                       seed, drawn_before):
    # drawn_before: gauss() calls already made (an odd number leaves the second number of a pair pending), and the
    # models' parameter counts are odd and even, so a pair is left pending after the draw too
    cfg = atomic.GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_embd=n_embd, n_head=2)
    want_rng, got_rng = random.Random(seed), random.Random(seed)
    for _ in range(drawn_before):
        want_rng.gauss(0, 1), got_rng.gauss(0, 1)
    assert list(reference_weights(cfg, got_rng, std)) == the_references(cfg, want_rng, std)
    assert got_rng.getstate() == want_rng.getstate()
    assert got_rng.gauss(0, 1) == want_rng.gauss(0, 1) and got_rng.random() == want_rng.random()


def test_the_reference_model_with_and_without_numpy(draw):
    got_rng, want_rng = random.Random(42), random.Random(42)
    got = draw(atomic.GPTConfig(), got_rng)
    assert list(got) == the_references(atomic.GPTConfig(), want_rng, 0.08) and len(got) == 4192
    assert got_rng.getstate() == want_rng.getstate()


def test_a_model_larger_than_one_round_of_draws(draw):
    # 2 x 64 wide: 102,784 weights, several rounds of the NumPy path, and an odd pending number at the end
    cfg = atomic.GPTConfig(vocab_size=27, n_layer=2, n_embd=64)
    got_rng, want_rng = random.Random(7), random.Random(7)
    want_rng.gauss(0, 1), got_rng.gauss(0, 1)
    assert list(draw(cfg, got_rng, 0.02)) == the_references(cfg, want_rng, 0.02)
    assert got_rng.getstate() == want_rng.getstate()

"""The atomic model as a function of its weights: its gradient against finite differences, a deep
model that the original's recursive walk cannot train, and the reference initialisation."""
import random
import sys

from conftest import recursive_post_order

from microgpt.atomic import GPTConfig, Value, adam_step, doc_loss, init_weights, param_shapes, to_values

TINY = GPTConfig(vocab_size=5, block_size=4, n_layer=2, n_embd=4, n_head=2)
TOKENS = [4, 0, 3, 1, 2, 4]  # BOS, four characters, BOS: longer than block_size, so it is cut to 4


def loss_of(weights, cfg=TINY, tokens=TOKENS):
    return doc_loss(tokens, to_values(weights), cfg).data


def test_model_loss_gradient_matches_finite_differences():
    # Every weight of a 2-layer model, central differences with h = 1e-6 (see test_autograd for the
    # error budget: truncation ~h^2, rounding ~1e-16/h, both far below the 1e-6 tolerance).
    weights = init_weights(TINY, random.Random(0), std=0.5)  # larger than 0.08 so no gradient is ~0
    w = to_values(weights)
    doc_loss(TOKENS, w, TINY).backward()
    h, checked = 1e-6, 0
    for name, mat in weights.items():
        for i, row in enumerate(mat):
            for j, x in enumerate(row):
                row[j] = x + h
                up = loss_of(weights)
                row[j] = x - h
                down = loss_of(weights)
                row[j] = x
                numerical, analytic = (up - down) / (2 * h), w[name][i][j].grad
                assert abs(analytic - numerical) <= 1e-6 * max(1.0, abs(numerical)), \
                    f"{name}[{i}][{j}]: autograd {analytic}, finite difference {numerical}"
                checked += 1
    assert checked == sum(r * c for r, c in param_shapes(TINY).values())


def test_deep_model_trains_without_recursion_error():
    # n_layer 8 x n_embd 64: the loss graph is far deeper than the recursion limit, so the original's
    # recursive walk fails on it; one training step (backward + Adam) must succeed.
    cfg = GPTConfig(vocab_size=27, block_size=16, n_layer=8, n_embd=64, n_head=4)
    w = to_values(init_weights(cfg, random.Random(42)))
    params = [p for mat in w.values() for row in mat for p in row]
    loss = doc_loss([26, 0, 26], w, cfg)
    limit = sys.getrecursionlimit()
    try:
        recursive_post_order(loss)
        raise AssertionError(f"the recursive walk fit in the recursion limit {limit}: the test is too small")
    except RecursionError:
        pass
    before = params[0].data
    loss.backward()
    m, v = [0.0] * len(params), [0.0] * len(params)
    adam_step(params, m, v, step=0, lr_t=0.01)
    assert params[0].data != before and all(p.grad == 0 for p in params)
    assert doc_loss([26, 0, 26], w, cfg).data < loss.data  # the step went downhill


def test_reference_initialisation_shapes_and_order():
    cfg = GPTConfig()
    weights = init_weights(cfg, random.Random(42))
    assert list(weights)[:5] == ["wte", "wpe", "lm_head", "layer0.attn_wq", "layer0.attn_wk"]
    assert sum(len(m) * len(m[0]) for m in weights.values()) == 4192
    again = init_weights(cfg, random.Random(42))
    assert weights == again
    first = random.Random(42).gauss(0, 0.08)
    assert weights["wte"][0][0] == first  # drawn row by row from the first draw on


def test_model_is_a_function_of_its_arguments():
    # No hidden state: the same weights and tokens give the same loss, another weight set another.
    weights = init_weights(TINY, random.Random(1))
    assert loss_of(weights) == loss_of(weights)
    assert loss_of(weights) != loss_of(init_weights(TINY, random.Random(2)))
    assert isinstance(doc_loss(TOKENS, to_values(weights), TINY), Value)

"""Value, the scalar autograd: every operation's gradient against central finite differences, and
the iterative backward walk against the recursive one it replaces.

Tolerance: central differences f'(x) ~ (f(x+h) - f(x-h)) / 2h err by about h^2 |f'''| / 6 from
truncation plus eps |f| / h from rounding (eps = 2.2e-16). With h = 1e-6 both are below 1e-9 for the
smooth functions here, so 1e-6 (relative to max(1, |f'|)) fails on any wrong formula and never on
rounding."""
import math
import sys

import pytest
from conftest import recursive_post_order
from hypothesis import given
from hypothesis import strategies as st

from microgpt.atomic import Value

H = 1e-6
TOL = 1e-6


def numerical_grads(f, xs):
    grads = []
    for i in range(len(xs)):
        up, down = list(xs), list(xs)
        up[i] += H
        down[i] -= H
        grads.append((f(*up) - f(*down)) / (2 * H))
    return grads


def autograd_grads(f, xs):
    vs = [Value(x) for x in xs]
    out = f(*vs)
    out.backward()
    return out.data, [v.grad for v in vs]


def assert_gradients_match(f, xs):
    value, grads = autograd_grads(f, xs)
    assert value == pytest.approx(f(*xs), rel=1e-15, abs=1e-15), "forward value differs from float math"
    for i, (got, want) in enumerate(zip(grads, numerical_grads(f, xs))):
        assert abs(got - want) <= TOL * max(1.0, abs(want)), f"input {i}: autograd {got}, finite diff {want}"


def log(x):
    return x.log() if isinstance(x, Value) else math.log(x)


def exp(x):
    return x.exp() if isinstance(x, Value) else math.exp(x)


def relu(x):
    return x.relu() if isinstance(x, Value) else max(0.0, x)


OPERATIONS = {
    "add": (lambda a, b: a + b, [1.3, -0.7]),
    "radd": (lambda a: 2.5 + a, [0.4]),
    "mul": (lambda a, b: a * b, [1.3, -0.7]),
    "rmul": (lambda a: -3.0 * a, [0.4]),
    "pow": (lambda a: a**3, [1.7]),
    "pow_negative": (lambda a: a**-0.5, [2.3]),
    "log": (lambda a: log(a), [0.8]),
    "exp": (lambda a: exp(a), [-1.2]),
    "relu_positive": (lambda a: relu(a), [0.9]),
    "relu_negative": (lambda a: relu(a), [-0.9]),
    "neg": (lambda a: -a, [0.3]),
    "sub": (lambda a, b: a - b, [1.3, -0.7]),
    "rsub": (lambda a: 1.0 - a, [0.4]),
    "truediv": (lambda a, b: a / b, [1.3, -0.7]),
    "rtruediv": (lambda a: 2.0 / a, [0.4]),
    "shared_node": (lambda a, b: (a * b + a) * a, [1.1, -0.6]),  # a is used three times
}


@pytest.mark.parametrize("name", OPERATIONS)
def test_operation_gradient_matches_finite_differences(name):
    f, xs = OPERATIONS[name]
    assert_gradients_match(f, xs)


@given(st.lists(st.floats(-3, 3), min_size=3, max_size=3))
def test_composite_expression_gradient_matches_finite_differences(xs):
    # softplus-like composite of every operation; smooth everywhere in [-3, 3]
    def f(a, b, c):
        return log(exp(a) + 1.0) * b - (c * c + 1.0) ** -0.5 / (b * b + 2.0) + relu(a + 10.0)
    assert_gradients_match(f, xs)


def test_backward_sums_gradients_in_the_original_order():
    # The iterative walk visits nodes in the recursive original's order, so every gradient is
    # summed in the same order: equal bit for bit, not merely close.
    a, b, c = Value(0.3), Value(-1.2), Value(2.0)
    out = ((a * b + c).exp() * a - (c / (b * b)).log() + a * a * a) ** 2
    out.backward()
    iterative = [a.grad, b.grad, c.grad]

    topo = recursive_post_order(out)
    for v in topo:
        v.grad = 0
    out.grad = 1
    for node in reversed(topo):
        for child, local_grad in zip(node._children, node._local_grads):
            child.grad += local_grad * node.grad
    assert [a.grad, b.grad, c.grad] == iterative


def test_backward_walks_a_graph_deeper_than_the_recursion_limit():
    depth = 5 * sys.getrecursionlimit()
    x = Value(1.0)
    y = x
    for _ in range(depth):
        y = y * 1.0 + 0.0
    with pytest.raises(RecursionError):
        recursive_post_order(y)  # what the original would do
    y.backward()
    assert x.grad == 1.0

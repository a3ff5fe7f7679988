"""Sampling, unit by unit: how `pick` cuts and draws (tests/test_generation.py: how `generate` drives a model).

Covered here, without a model (a few seconds in all):
- top-k: only the k most likely tokens are drawn, all of them, at their renormalised frequencies; k >= V is no
  cut; a tie at the k-th probability keeps every tied token.
- top-p: the kept set is the smallest set of the most likely tokens whose probability reaches p (>=), checked
  exactly at the boundaries and as a property over many p; draws follow the renormalised kept distribution.
- temperature 0 (and below 1e-4) is greedy: the first most likely token, without touching the random stream.
- with no cut, `pick` is the reference's arithmetic: its softmax to the last bit (atomic.softmax on Values), then
  `random.choices` over it, one `random()` per token.

Two kinds of check are used for `pick`. The exact kept set and its weights are read with `WeightsSpy`, a stand-in
random generator that records the weights `pick` hands to `choices` (the draw the module documents). The draws
themselves are counted with a seeded `random.Random` and compared with the expected probabilities, with a
tolerance of five binomial standard errors per token (see `assert_frequencies`).
"""
import math
import random

import pytest

from microgpt import atomic
from microgpt.sampling import pick, softmax

DRAWS = 20_000  # enough for a 5-standard-error band of at most ±1.8 percentage points (q = 0.5), in ~0.1 s


class WeightsSpy:
    """Takes the place of a random.Random in `pick`: records the weights it is asked to draw from."""

    def __init__(self):
        self.weights = None

    def choices(self, population, weights=None, **kwargs):
        self.weights = list(weights)
        return [population[0]]


def kept_weights(logits, temperature=1.0, **cut):
    """The weights `pick` draws from, after its cuts (zero for a token it dropped)."""
    spy = WeightsSpy()
    pick(logits, spy, temperature, **cut)
    return spy.weights


def kept(logits, temperature=1.0, **cut):
    """The token ids `pick` can still draw."""
    return {i for i, w in enumerate(kept_weights(logits, temperature, **cut)) if w > 0}


def draw_counts(logits, seed, temperature=1.0, n=DRAWS, **cut):
    rng = random.Random(seed)
    counts = [0] * len(logits)
    for _ in range(n):
        counts[pick(logits, rng, temperature, **cut)] += 1
    return counts


def assert_frequencies(counts, expected):
    """Each token's count is within 5 standard errors of n * q, its expected probability q.

    A count is Binomial(n, q): its standard error is sqrt(n q (1 - q)). Five of them leave a chance below 1e-6
    per token that a correct `pick` falls outside (two-sided normal tail at 5 sigma: 5.7e-7), so the seed is not
    cherry-picked: nearly any seed passes, while a wrong distribution (say, not renormalised, or a token off by a
    few points) is many standard errors away at n = 20,000. A token of probability 0 must never be drawn.
    """
    n = sum(counts)
    for i, (c, q) in enumerate(zip(counts, expected)):
        if q == 0:
            assert c == 0, f"token {i} was cut but drawn {c} times"
        else:
            se = math.sqrt(n * q * (1 - q))
            assert c > 0, f"token {i} (p={q:.3f}) was never drawn"
            assert abs(c - n * q) <= 5 * se, f"token {i}: {c} draws, expected {n * q:.0f} ± {5 * se:.0f}"


def renormalised(probs, keep):
    mass = sum(probs[i] for i in keep)
    return [p / mass if i in keep else 0.0 for i, p in enumerate(probs)]


# ---- top-k ----------------------------------------------------------------------------------------------------

# Six distinct logits: by probability the order is 0, 3, 2, 5, 4, 1.
SIX = [2.0, -1.0, 0.5, 1.5, -0.5, 0.0]


@pytest.mark.parametrize("k, expected", [(1, {0}), (2, {0, 3}), (3, {0, 3, 2}), (5, {0, 3, 2, 5, 4})])
def test_top_k_keeps_exactly_the_k_most_likely_tokens(k, expected):
    assert kept(SIX, top_k=k) == expected


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_top_k_draws_follow_the_renormalised_probabilities(temperature):
    probs = softmax(SIX, temperature)
    counts = draw_counts(SIX, seed=1, temperature=temperature, top_k=3)
    assert {i for i, c in enumerate(counts) if c} == {0, 3, 2}  # only the top 3, and all of them
    assert_frequencies(counts, renormalised(probs, {0, 3, 2}))


@pytest.mark.parametrize("k", [6, 7, 100])
def test_top_k_of_at_least_the_vocabulary_is_no_cut(k):
    assert kept_weights(SIX, top_k=k) == kept_weights(SIX) == softmax(SIX, 1.0)
    # and the same draws, from the same random stream
    assert draw_counts(SIX, seed=2, n=500, top_k=k) == draw_counts(SIX, seed=2, n=500)


def test_top_k_keeps_every_token_tied_with_the_kth():
    # Tokens 1 and 2 have equal logits, hence bitwise-equal probabilities. `pick` keeps every token whose
    # probability is >= the k-th largest, so top_k=2 keeps three tokens here rather than choosing between the tied
    # ones (which would need an arbitrary tie-break). Only a tie *at* the k-th place widens the set.
    tied = [2.0, 1.0, 1.0, 0.0, -1.0]
    assert kept(tied, top_k=2) == {0, 1, 2}
    assert kept(tied, top_k=1) == {0}
    assert kept(tied, top_k=3) == {0, 1, 2}
    counts = draw_counts(tied, seed=3, top_k=2)
    assert_frequencies(counts, renormalised(softmax(tied, 1.0), {0, 1, 2}))


# ---- top-p ----------------------------------------------------------------------------------------------------

# Probabilities 1/2, 1/4, 3/16, 1/16, given as their logs. These are dyadic so that softmax gives them back
# exactly (its sum is exactly 1.0 and 0.5 + 0.25 == 0.75 with no rounding), which lets the `>=` boundary be
# tested at p equal to a cumulative mass. With decimal probabilities such as 0.5, 0.3, 0.15, 0.05 it cannot:
# softmax returns 0.29999999999999993 for the second, so 0.5 + 0.3 sums to 0.7999999999999999 < 0.8 and
# top_p=0.8 keeps three tokens, not two — a test of that boundary would test rounding, not `pick`.
DYADIC = [math.log(p) for p in (0.5, 0.25, 0.1875, 0.0625)]


def test_top_p_dyadic_probabilities_are_exact():
    # The premise of the boundary test below; if a platform's exp/log broke it, this says so plainly.
    probs = softmax(DYADIC, 1.0)
    assert sum(probs) == 1.0 and probs[0] == 0.5 and probs[0] + probs[1] == 0.75


@pytest.mark.parametrize("p, expected", [
    (0.3, {0}),
    (0.5, {0}),  # boundary: the first token alone holds exactly 0.5, and reaching p (>=) is enough
    (0.6, {0, 1}),
    (0.75, {0, 1}),  # boundary: 0.5 + 0.25
    (0.75 + 1e-9, {0, 1, 2}),  # just past it (1e-9 is far above rounding error, ~1e-16) takes one more token
    (0.9375, {0, 1, 2}),  # boundary: 0.5 + 0.25 + 0.1875
    (0.95, {0, 1, 2, 3}),
    (1.0, {0, 1, 2, 3}),  # no cut
])
def test_top_p_keeps_the_smallest_most_likely_set_that_reaches_p(p, expected):
    assert kept(DYADIC, top_p=p) == expected


def test_top_p_kept_mass_reaches_p_and_would_not_without_its_least_likely_token():
    # A property over random distributions and a grid of p. The sums here are in a different order from `pick`'s,
    # so they may differ from its own by a few ulps; EPS absorbs that. With random logits, a p within 1e-12 of a
    # cumulative mass (where EPS could hide an off-by-one) has probability ~1e-11 per case.
    eps = 1e-12
    rng = random.Random(4)
    for _ in range(50):
        logits = [rng.gauss(0, 2) for _ in range(8)]
        probs = softmax(logits, 1.0)
        for p in [i / 20 for i in range(1, 20)]:
            keep = kept(logits, top_p=p)
            mass = sum(probs[i] for i in keep)
            assert mass >= p - eps
            assert mass - min(probs[i] for i in keep) < p + eps
            # and the kept tokens are the most likely ones: none left out is likelier than one kept
            assert min(probs[i] for i in keep) >= max((probs[i] for i in range(8) if i not in keep), default=0)


def test_top_p_draws_follow_the_renormalised_kept_distribution():
    counts = draw_counts(DYADIC, seed=5, top_p=0.7)  # keeps {0, 1}: 2/3 and 1/3 once renormalised
    assert_frequencies(counts, [2 / 3, 1 / 3, 0.0, 0.0])
    counts = draw_counts(DYADIC, seed=6, top_p=0.9)  # keeps {0, 1, 2}: 8/15, 4/15, 3/15
    assert_frequencies(counts, [8 / 15, 4 / 15, 3 / 15, 0.0])


def test_top_p_applies_to_the_distribution_left_by_top_k():
    # After top_k=2 the kept mass is 0.75, and top_p is a fraction of that, not of 1: 0.6 of it is 0.45, which
    # token 0 alone (0.5) reaches. Read against the whole distribution, 0.6 would have needed tokens 0 and 1.
    assert kept(DYADIC, top_k=2, top_p=0.6) == {0}
    assert kept(DYADIC, top_p=0.6) == {0, 1}


# ---- temperature 0 --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [0.0, 1e-5, 9.99e-5])
def test_temperature_zero_takes_the_first_most_likely_token_without_drawing(temperature):
    rng = random.Random(7)
    state = rng.getstate()
    assert pick([0.1, 2.0, 2.0, -3.0], rng, temperature) == 1  # a tie: the first of the two
    assert pick([5.0, 1.0, 5.0], rng, temperature) == 0
    assert pick([1.0, 2.0, 3.0, 4.0], rng, temperature, top_k=2, top_p=0.5) == 3  # cuts do not matter
    assert rng.getstate() == state  # the random stream is untouched, so later draws are unaffected


def test_temperature_at_the_greedy_threshold_still_draws():
    # 1e-4 is the first temperature not taken as 0: it draws, consuming one random number.
    rng, twin = random.Random(8), random.Random(8)
    pick([0.0, 1.0], rng, 1e-4)
    twin.random()
    assert rng.getstate() == twin.getstate()


# ---- the reference's arithmetic -------------------------------------------------------------------------------

# 0.7 and 0.9 are there because for them logit / t and logit * t**-1 differ in the last bit for some of these
# logits (for 0.5 or 2.0 they never do): a softmax that divided would fail here.
@pytest.mark.parametrize("temperature", [1.0, 0.5, 0.7, 0.9, 2.0])
def test_softmax_is_the_references_to_the_last_bit(temperature):
    # atomic.sample computes softmax([logit / temperature ...]) on Values, whose division is a * b**-1. Equal
    # floats (not merely close ones) are what lets every engine reproduce the reference run's samples: one ulp of
    # difference in a weight can move a draw that falls near a boundary of the cumulative weights.
    logits = [1.3, -0.2, 0.0, 2.1, 0.7, -1.5, 0.4]
    reference = atomic.softmax([atomic.Value(logit) / temperature for logit in logits])
    assert softmax(logits, temperature) == [p.data for p in reference]


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_pick_without_cuts_is_random_choices_over_the_softmax(temperature):
    logits = [1.3, -0.2, 0.0, 2.1, 0.7, -1.5, 0.4]
    rng, twin = random.Random(9), random.Random(9)
    weights = softmax(logits, temperature)
    for _ in range(300):
        assert pick(logits, rng, temperature) == twin.choices(range(len(logits)), weights=weights)[0]
    assert rng.getstate() == twin.getstate()


def test_pick_draws_one_random_number_per_token():
    rng, twin = random.Random(10), random.Random(10)
    for _ in range(5):
        pick([0.5, 0.2, 0.9], rng, 1.0, top_k=2, top_p=0.9)  # with cuts too: still one draw
        twin.random()
        assert rng.getstate() == twin.getstate()

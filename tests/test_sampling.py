"""Sampling, unit by unit: how `pick` cuts and draws, and how `generate` drives an engine's cache.

Covered here, without a model (a few seconds in all):
- top-k: only the k most likely tokens are drawn, all of them, at their renormalised frequencies; k >= V is no
  cut; a tie at the k-th probability keeps every tied token.
- top-p: the kept set is the smallest set of the most likely tokens whose probability reaches p (>=), checked
  exactly at the boundaries and as a property over many p; draws follow the renormalised kept distribution.
- temperature 0 (and below 1e-4) is greedy: the first most likely token, without touching the random stream.
- with no cut, `pick` is the reference's arithmetic: its softmax to the last bit (atomic.softmax on Values), then
  `random.choices` over it, one `random()` per token.
- `generate` with a fake engine: the prompt is fed once, then one token at a time through the same cache; `stop`
  ends the output without being emitted; at most max_new_tokens come out; when the cache holds a whole block the
  engine gets a fresh cache fed with the last block_size // 2 tokens (or 1); the sampling settings reach `pick`.

Two kinds of check are used for `pick`. The exact kept set and its weights are read with `WeightsSpy`, a stand-in
random generator that records the weights `pick` hands to `choices` (the draw the module documents). The draws
themselves are counted with a seeded `random.Random` and compared with the expected probabilities, with a
tolerance of five binomial standard errors per token (see `assert_frequencies`).
"""
import math
import random

import pytest

from microgpt import atomic
from microgpt.sampling import generate, pick, softmax

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


# ---- generate -------------------------------------------------------------------------------------------------

class CountingEngine:
    """A stand-in model: after token t it predicts (t + 1) % V, ahead of every other token by `margin` logits.

    It keeps what `generate` asks of an engine: new_cache() gives a fresh cache, forward(tokens, cache) appends the
    tokens to it and returns one row of V logits per token fed. It records every call as (cache number, cache
    length before, tokens fed); cache number n is the n-th cache new_cache made, counted from 0, so a call on a
    fresh cache and a call on the same cache can be told apart.
    """

    def __init__(self, vocab_size=50, margin=30.0):
        self.vocab_size, self.margin = vocab_size, margin
        self.caches, self.calls = [], []

    def new_cache(self):
        self.caches.append([])
        return self.caches[-1]

    def row(self, token):
        favoured = (token + 1) % self.vocab_size
        return [self.margin if j == favoured else 0.0 for j in range(self.vocab_size)]

    def forward(self, tokens, cache):
        number = next(n for n, c in enumerate(self.caches) if c is cache)
        self.calls.append((number, len(cache), list(tokens)))
        cache.extend(tokens)
        return [self.row(t) for t in tokens]


def greedy(engine, prompt, max_new_tokens, block_size=64, **kwargs):
    return generate(engine, prompt, random.Random(0), max_new_tokens, block_size, temperature=0.0, **kwargs)


def test_generate_feeds_the_prompt_once_then_each_drawn_token_through_one_cache():
    engine = CountingEngine()
    assert greedy(engine, [3, 4, 5], 4) == [6, 7, 8, 9]
    # The last token drawn (9) is never fed: nothing would read its logits.
    assert engine.calls == [(0, 0, [3, 4, 5]), (0, 3, [6]), (0, 4, [7]), (0, 5, [8])]
    assert len(engine.caches) == 1


def test_generate_stops_at_the_stop_token_without_emitting_or_feeding_it():
    engine = CountingEngine()
    assert greedy(engine, [0], 20, stop=5) == [1, 2, 3, 4]
    assert engine.calls[-1] == (0, 4, [4])  # 5 was drawn after this call, and ended the loop
    assert greedy(CountingEngine(), [4], 20, stop=5) == []  # the very first draw can stop it


@pytest.mark.parametrize("n", [0, 1, 6])
def test_generate_emits_at_most_max_new_tokens(n):
    engine = CountingEngine()
    assert greedy(engine, [0], n) == list(range(1, n + 1))
    assert len(engine.calls) == max(n, 1)  # the prompt, then every drawn token but the last


def test_generate_restarts_from_the_last_half_block_when_the_cache_is_full():
    # block_size 8, a 3-token prompt, 20 new tokens: the output runs 13, 14, ..., 32 regardless of restarts. The
    # cache fills to 8 positions (the prompt and 13..17); when 18 is drawn there is no position left for it, so a
    # fresh cache gets the last 4 tokens of the context, 15..18, and fills one token at a time again, up to 8.
    engine = CountingEngine()
    assert generate(engine, [10, 11, 12], random.Random(0), 20, 8, temperature=0.0) == list(range(13, 33))
    assert engine.calls == [
        (0, 0, [10, 11, 12]), (0, 3, [13]), (0, 4, [14]), (0, 5, [15]), (0, 6, [16]), (0, 7, [17]),
        (1, 0, [15, 16, 17, 18]), (1, 4, [19]), (1, 5, [20]), (1, 6, [21]), (1, 7, [22]),
        (2, 0, [20, 21, 22, 23]), (2, 4, [24]), (2, 5, [25]), (2, 6, [26]), (2, 7, [27]),
        (3, 0, [25, 26, 27, 28]), (3, 4, [29]), (3, 5, [30]), (3, 6, [31])]


@pytest.mark.parametrize("block_size", [1, 2, 5, 8])
def test_generate_restart_invariants(block_size):
    # What holds for any restart policy that keeps a half-block window: the cache never holds more than the block
    # (an engine has only block_size positions); no restart happens before the cache is full; every call either
    # appends the token drawn last to the cache it was given, or starts a fresh cache with exactly the last
    # block_size // 2 tokens (at least 1) of the context.
    engine = CountingEngine(vocab_size=7)  # small, so the sequence wraps around
    prompt = [2] if block_size < 3 else [2, 3]
    out = generate(engine, prompt, random.Random(0), 30, block_size, temperature=0.0)
    assert out == [(prompt[-1] + 1 + i) % 7 for i in range(30)]
    context = prompt + out
    window = block_size // 2 or 1
    assert engine.calls[0] == (0, 0, prompt)
    first_restart = next(n for n, call in enumerate(engine.calls) if call[0] == 1)
    assert sum(len(fed) for _, _, fed in engine.calls[:first_restart]) == block_size  # the cache was full
    for n, (cache, before, fed) in enumerate(engine.calls[1:], start=1):
        fed_so_far = len(prompt) + n  # the context length when this call was made
        assert before + len(fed) <= block_size
        if cache == engine.calls[n - 1][0]:
            assert fed == [context[fed_so_far - 1]] and before == engine.calls[n - 1][1] + len(engine.calls[n - 1][2])
        else:
            assert cache == engine.calls[n - 1][0] + 1 and before == 0
            assert fed == context[fed_so_far - window:fed_so_far]


def test_generate_with_a_block_of_one_restarts_from_the_last_token():
    # block_size // 2 is 0 here; `or 1` keeps one token of context, so every step is a fresh one-token cache.
    engine = CountingEngine()
    assert generate(engine, [7], random.Random(0), 5, 1, temperature=0.0) == [8, 9, 10, 11, 12]
    assert engine.calls == [(0, 0, [7]), (1, 0, [8]), (2, 0, [9]), (3, 0, [10]), (4, 0, [11])]


def test_generate_passes_its_sampling_settings_to_pick():
    # A small margin leaves the favoured token at about 0.45 (V = 5, margin 2), so an unconstrained draw varies.
    engine = CountingEngine(vocab_size=5, margin=2.0)
    # top_k=1 and a tiny top_p each leave only the favoured token, at temperature 1: the sequence is greedy's.
    assert generate(engine, [0], random.Random(11), 12, 64, 1.0, top_k=1) == [(1 + i) % 5 for i in range(12)]
    assert generate(engine, [0], random.Random(11), 12, 64, 1.0, top_p=0.01) == [(1 + i) % 5 for i in range(12)]
    # Otherwise generate draws exactly what `pick` draws on the same logits from the same stream, in order.
    for temperature, top_k, top_p in [(1.0, 0, 1.0), (0.8, 3, 1.0), (1.3, 0, 0.7)]:
        rng, twin = random.Random(12), random.Random(12)
        out = generate(engine, [0], rng, 40, 64, temperature, top_k, top_p)
        expected, last = [], 0
        for _ in range(40):
            last = pick(engine.row(last), twin, temperature, top_k, top_p)
            expected.append(last)
        assert out == expected
        assert len(set(out)) > 1  # the draws really were random, not greedy

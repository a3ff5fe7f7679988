"""`generate`, driving a stand-in model: the prompt is fed once, then one token at a time through the same cache;
`stop` ends the output without being emitted; at most max_new_tokens come out; when the cache holds a whole block,
a fresh cache is fed the last block_size // 2 tokens (or 1); the sampling settings reach `pick`."""
import random

import pytest

from microgpt.sampling import generate, pick


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

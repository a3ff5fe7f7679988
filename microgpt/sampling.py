"""Sampling: draw a document from any engine, token by token, through its key/value cache.

The arithmetic is the reference's (atomic.sample on Values): logits scaled by temperature**-1, a
softmax as exp(z - max) * sum**-1, and one random() draw per token through random.choices, so every
engine draws the same samples from the same random stream."""
import math


def softmax(logits, temperature):  # (V,) floats -> (V,) probabilities
    z = [logit * temperature**-1 for logit in logits]
    mx = max(z)
    e = [math.exp(zi - mx) for zi in z]
    inv = sum(e) ** -1
    return [ei * inv for ei in e]


def sample(engine, bos, rng, temperature, max_tokens):
    """Token ids of a new document: feed BOS, draw, feed the draw back, until BOS or max_tokens."""
    cache, token, out = engine.new_cache(), bos, []
    for _ in range(max_tokens):
        probs = softmax(engine.forward([token], cache)[-1], temperature)
        token = rng.choices(range(len(probs)), weights=probs)[0]
        if token == bos:
            break
        out.append(token)
    return out

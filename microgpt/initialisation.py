"""The reference initialisation (atomic.init_weights) as one flat array (P,), drawn fast, bit for bit the same.

atomic.init_weights draws every weight with random.gauss, one Python call each: 4,192 calls for the reference
model, but 10.7 million at nanoGPT's size (about 4 s here). With NumPy this draws the very same numbers and leaves
the generator in the very same state, about three times faster, by doing what random.gauss does on whole arrays:

  random.random() turns two 32-bit outputs a, b of the Mersenne Twister into ((a >> 5) * 2**26 + (b >> 6)) / 2**53;
      NumPy's MT19937, given the same 624-word state, yields the same 32-bit outputs;
  random.gauss() is Box-Muller on two such numbers u1, u2: r = sqrt(-2 log(1 - u2)) gives r cos(2 pi u1) now
      and keeps r sin(2 pi u1) for the next call (the state's third part, gauss_next);
  log, cos and sin come from the C library (math.log, ...), applied with map(), because NumPy's own may round
      differently in the last bit; products and sqrt are correctly rounded IEEE arithmetic in both.
Without NumPy it is random.gauss in a loop. tests/test_initialisation.py holds both to atomic.init_weights.
"""
import math
from array import array

from microgpt.layout import param_count

CHUNK = 1 << 14  # pairs of normal numbers drawn per round: small enough to stay in the CPU's cache


def reference_weights(cfg, rng, std=0.08):
    """Every weight drawn from N(0, std) by `rng` (a random.Random) in the reference order, as atomic.init_weights
    draws them: a NumPy float64 array (P,) if NumPy is installed, else array('d')."""
    try:
        import numpy as np
    except ImportError:
        return array("d", (rng.gauss(0, std) for _ in range(param_count(cfg))))
    return draw_normal(np, rng, param_count(cfg), std)


def draw_normal(np, rng, n, std):
    """n draws of rng.gauss(0, std), as a float64 array; rng ends in the state that n calls would leave."""
    version, words, pending = rng.getstate()  # words: 624 words of state and the position in them
    bits = np.random.MT19937()
    bits.state = {"bit_generator": "MT19937", "state": {"key": np.array(words[:-1], dtype=np.uint32),
                                                        "pos": words[-1]}}
    out, i = np.empty(n), 0
    if pending is not None and n:  # the second number of a pair drawn by an earlier call
        out[0], i, pending = 0 + pending * std, 1, None
    while i < n:
        pairs = min(CHUNK, (n - i + 1) // 2)
        raw = bits.random_raw(4 * pairs).reshape(pairs, 2, 2)  # per pair two random() calls of two outputs each
        u = ((raw[..., 0] >> 5) * 67108864.0 + (raw[..., 1] >> 6)) * (1.0 / 9007199254740992.0)  # (pairs, 2)
        angle = (u[:, 0] * (2.0 * math.pi)).tolist()
        radius = np.sqrt(-2.0 * np.fromiter(map(math.log, (1.0 - u[:, 1]).tolist()), float, pairs))
        z = np.empty((pairs, 2))
        z[:, 0] = np.fromiter(map(math.cos, angle), float, pairs) * radius
        z[:, 1] = np.fromiter(map(math.sin, angle), float, pairs) * radius
        take = min(2 * pairs, n - i)
        out[i:i + take] = 0 + z.ravel()[:take] * std  # random.gauss's mu + z * sigma
        pending = float(z[-1, 1]) if take % 2 else None  # an odd count leaves the last sine for the next call
        i += take
    state = bits.state["state"]
    rng.setstate((version, (*state["key"].tolist(), int(state["pos"])), pending))
    return out

"""Dropout: which activations a training step zeroes, decided in one place for every engine.

`train --dropout P` zeroes each activation at four places with probability P and scales the survivors by 1/(1-P)
("inverted" dropout: evaluation and sampling then use the model as it is, with nothing to undo). The places are
nanoGPT's: the embedding sum, the attention weights, the attention block's output (after attn_wo) and the MLP block's
output (after mlp_fc2), the last two before they join the residual stream.

Whether an activation is kept is not drawn from a random generator that each engine would advance in its own order;
it is a hash of where the activation is: (seed, step, place, layer, document, coordinate) -> 32 bits, kept if they
are at least P * 2^32. Every engine asks the same question about the same activation and gets the same answer,
whatever its layout (documents end to end in the python engine, padded to a common length in numpy and torch,
spread over processes by torchrun): given the same masks, the engines compute the same numbers, and
tests/test_dropout.py holds them to 1e-12 in float64. The masks of a step need no state beyond the run's seed and
the step's number, both in every checkpoint, so a resumed run draws the masks it would have drawn.

Coordinates are per document, with strides that do not depend on how long the batch's longest document is:
an activation (T, C) at position t, channel c is t * C + c; an attention weight of head h, query i, key j is
(h * block_size + i) * block_size + j.
"""
from typing import NamedTuple

MASK32 = 0xFFFFFFFF
EMBEDDING, ATTENTION_WEIGHTS, ATTENTION_OUTPUT, MLP_OUTPUT = range(4)  # the places, as the hash numbers them


def mix32(x):
    """A bijection of 32-bit integers in which every input bit flips about half the output bits (Chris Wellons'
    "lowbias32" integer hash). x: a Python int, a NumPy uint32 array (whose products wrap at 32 bits), or a NumPy
    or torch int64 array of values in [0, 2^32) (whose products may pass 64 bits: their low 32, all that is kept,
    are exact)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


class Dropout(NamedTuple):
    """The dropout of one training step: probability p, the run's seed, the step (from 0)."""
    p: float
    seed: int
    step: int

    @property
    def scale(self):  # what a kept activation is multiplied by
        return 1 / (1 - self.p)

    def key(self, place, layer=0):
        """The 32 bits that stand for (seed, step, place, layer): each folded into the last by a hash."""
        key = mix32(self.seed & MASK32)
        for part in (self.step, place, layer):
            key = mix32(key ^ part)
        return key


def kept(p, key, document, coordinate):
    """Whether the activation at `coordinate` of `document` (its place in the whole batch, from 0) survives dropout
    with probability p, under the key of its place (Dropout.key); ints give a bool, int64 arrays (broadcast
    together) a boolean array."""
    return mix32(mix32(key ^ document) ^ coordinate) >= round(p * 2**32)


def coordinates(shape, strides, arange):
    """The coordinate sum(index * stride) of every element of an array of `shape`, as an int64 array that broadcasts
    to it; arange: numpy.arange, or torch.arange on the device."""
    return sum(arange(n).reshape((-1,) + (1,) * (len(shape) - 1 - axis)) * stride
               for axis, (n, stride) in enumerate(zip(shape, strides)))

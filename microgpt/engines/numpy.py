"""The numpy engine: the python engine's operations, pair for pair and name for name, on float64 arrays.

Each `*_forward` / `*_backward` pair here computes what the pair of the same name in microgpt/engines/python.py
computes, with the same parameters and the same conventions (a backward returns dx and adds into the dw it is
given), with whole arrays instead of loops: lay the two files side by side. As there, a batch's documents lie end to
end, a row per token, so that every operation but attention computes on tokens alone, never on padding (a batch of
64 names padded to its longest is over a third padding). Attention, which needs each document's tokens side by side,
sees them padded into a grid (B, T) and takes every document at once; causal attention keeps real tokens from ever
seeing the padding (and attention that is not, `--ablate causal-mask`, hides it), so it receives no gradient. All
weights live in one flat array (and so do their gradients and Adam's moments): a matrix is a view into it, and Adam
is a few whole-array operations. float64 by default, so the numbers agree with the atomic file to rounding (float32
on request: about twice as fast, and agrees to about 1e-6).

Shapes: N = tokens of a batch (its documents end to end), B = documents, T = tokens of the longest (the grid
attention pads them into), C = n_embd, H = n_head, D = head_dim = C // H, V = vocab_size, P = parameters.
"""
import math
from functools import partial
from itertools import chain
from typing import NamedTuple

import numpy as np

from microgpt import health
from microgpt.allocator import keep_freed_memory
from microgpt.dropout import ATTENTION_OUTPUT, ATTENTION_WEIGHTS, EMBEDDING, MLP_OUTPUT, coordinates, kept
from microgpt.engines.base import Engine as Base
from microgpt.engines.base import Layer, Record, in_chunks
from microgpt.layout import split, stacked_qkv

# ----------------------------------------------------------------------------------------------------------------
# The operations, each a forward/backward pair


def embedding_forward(wte, wpe, tokens, positions):  # tokens, positions (N,) or None (no wpe) -> (N, C)
    return wte[tokens] if positions is None else wte[tokens] + wpe[positions]


def embedding_backward(dx, tokens, positions, dwte, dwpe):  # dx (N, C): each row into dwte[token], dwpe[position]
    add_rows(dwte, tokens, dx)
    if positions is not None:
        add_rows(dwpe, positions, dx)


def add_rows(dw, index, dx):
    """dw[index[n]] += dx[n] for every row n in order, each row of a repeated index added (a token that occurs twice
    gets both gradients). np.add.at on rows is slow (0.4 ms for a batch of names); on the flat arrays, element by
    element, it is four times as fast. (dw is contiguous, a view of the flat gradients: reshape is a view too.)"""
    C = dw.shape[1]
    np.add.at(dw.reshape(-1), (index[:, None] * C + np.arange(C)).reshape(-1), dx.reshape(-1))


def rms_scale(x):  # (N, C) -> (N, 1): (mean(x^2) + 1e-5)^-1/2, the reference's arithmetic
    return ((x * x).sum(axis=-1, keepdims=True) * x.shape[-1] ** -1 + 1e-5) ** -0.5


def rmsnorm_forward(x):  # (N, C) -> (N, C), each row scaled to unit root-mean-square
    return x * rms_scale(x)


def rmsnorm_backward(dy, x):  # dx = s * dy - (s^3 / C) * (dy . x) * x
    scale = rms_scale(x)
    return scale * dy - (scale**3 * x.shape[-1] ** -1) * (dy * x).sum(axis=-1, keepdims=True) * x


def linear_forward(x, w):  # x (N, nin), w (nout, nin) -> (N, nout): one matrix product for the whole batch
    return x @ w.T


def linear_backward(dy, x, w, dw):  # dy (N, nout) -> dx (N, nin); adds dy^T x into dw (nout, nin)
    dw += dy.T @ x
    return dy @ w


def relu_forward(x):
    return np.maximum(x, 0.0)


def relu_backward(dy, x):  # the gradient passes where the input was positive
    return dy * (x > 0)


def dropout_forward(x, mask):  # x times its mask (0, or 1 / (1 - p) where kept), of the same shape
    return x if mask is None else x * mask


def dropout_backward(dy, mask):  # a product with constants: the gradient is multiplied by them too
    return dropout_forward(dy, mask)


def dropout_mask(dropout, key, documents, coordinate, dtype):
    """dropout.scale where the activation of `documents` at `coordinate` (arrays that broadcast together) is kept, 0
    where dropped (microgpt/dropout.py). Both are uint32: half the memory of int64, and their products wrap at 32
    bits, as the hash wants."""
    return kept(dropout.p, key, documents, coordinate).astype(dtype) * dropout.scale


def softmax(z):  # along the last axis, the reference's arithmetic: exp(z - max) * (sum)^-1
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e * e.sum(axis=-1, keepdims=True) ** -1


def split_heads(x, n_head):  # (B, T, C) -> (B, H, T, D)
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):  # (B, H, T, D) -> (B, T, C)
    B, H, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * D)


def attention_forward(q, k, v, n_head, scale, causal, dropped=None, padding=None):
    """Self-attention, scores scaled by `scale`. q (B, Tq, C); k, v (B, Tk, C) with Tk >= Tq: the queries are the last
    Tq positions, so, causal, query i sees keys 0 ... Tk - Tq + i (else every key). dropped (B, H, Tq, Tk): the
    weights' dropout masks, in training. padding (B, Tk), without the causal mask: True at the keys that pad a
    shorter document, which no query may see (causal attention needs no such mask: padding follows a document's
    tokens, so they never see it). Returns out (B, Tq, C) and the scores and weights (B, H, Tq, Tk) (before dropout),
    -inf and 0 where a key is hidden."""
    Tq, Tk = q.shape[1], k.shape[1]
    scores = split_heads(q, n_head) @ split_heads(k, n_head).transpose(0, 1, 3, 2) * scale  # (B, H, Tq, Tk)
    if causal:
        scores[..., np.triu(np.ones((Tq, Tk), dtype=bool), k=Tk - Tq + 1)] = -np.inf  # the future: weight 0
    if padding is not None:
        scores[np.broadcast_to(padding[:, None, None, :], scores.shape)] = -np.inf
    weights = softmax(scores)
    return merge_heads(dropout_forward(weights, dropped) @ split_heads(v, n_head)), scores, weights


def attention_backward(dout, q, k, v, weights, n_head, scale, dropped=None):
    """dout (B, Tq, C) -> dq (B, Tq, C), dk, dv (B, Tk, C); dropped: the forward's dropout masks of the weights, or
    None. (The weights of hidden keys are 0, so their scores get no gradient: no mask needed here.)"""
    q_h, k_h, v_h, g_h = (split_heads(a, n_head) for a in (q, k, v, dout))
    dw = dropout_backward(g_h @ v_h.transpose(0, 1, 3, 2), dropped)  # (B, H, Tq, Tk): d(loss)/d(weight of key t)
    dv = dropout_forward(weights, dropped).transpose(0, 1, 3, 2) @ g_h
    dscores = weights * (dw - (weights * dw).sum(axis=-1, keepdims=True)) * scale  # softmax backward
    dq, dk = dscores @ k_h, dscores.transpose(0, 1, 3, 2) @ q_h
    return merge_heads(dq), merge_heads(dk), merge_heads(dv)


def cross_entropy_forward(logits, targets):  # logits (N, V), targets (N,) -> losses (N,), probs (N, V)
    probs = softmax(logits)
    losses = -np.log(probs[at_targets(targets)])
    underflowed = np.isinf(losses)  # p = 0: -log softmax from the logits, log(sum(exp(z - max))) - (z_t - max)
    if underflowed.any():
        z = logits - logits.max(axis=-1, keepdims=True)
        losses = np.where(underflowed, np.log(np.exp(z).sum(axis=-1)) - z[at_targets(targets)], losses)
    return losses, probs


def cross_entropy_backward(probs, targets, dloss):  # dloss: each token's share of the loss, 1/N
    dlogits = probs.copy()  # dlogits = probs - one_hot(target), scaled by dloss
    dlogits[at_targets(targets)] -= 1.0
    return dlogits * dloss


def at_targets(targets):  # the index of probs[n, targets[n]] for every n
    return np.arange(len(targets)), targets


def square_sum(x):  # the sum of x^2, in float64: a float32 dot product keeps fewer digits of ten million terms
    x = x.astype(np.float64, copy=False)
    return float(np.dot(x, x))


def adam_update(p, g, m, v, step, lr_t, beta1, beta2, eps, weight_decay):
    """AdamW on every parameter at once, in place on flat arrays (P,): the decoupled decay first, then the
    reference's expressions in the reference's order."""
    if weight_decay:
        p -= lr_t * weight_decay * p
    bias1, bias2 = 1 - beta1 ** (step + 1), 1 - beta2 ** (step + 1)
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * g**2
    p -= lr_t * (m / bias1) / ((v / bias2) ** 0.5 + eps)


# ----------------------------------------------------------------------------------------------------------------
# The batch: documents end to end, and the grid that attention pads them into


class Rows(NamedTuple):
    """The input tokens of a batch's documents, end to end (N rows), and where each sits in the grid (B, T) that
    attention pads them into: document b's token t in cell b * T + t."""
    tokens: np.ndarray  # (N,) int64
    positions: np.ndarray  # (N,) int64: each token's position in its document (after the cached ones, in sampling)
    documents: np.ndarray  # (N,) uint32: each token's document, its place in the batch (for dropout's hash)
    grid: tuple  # (B, T)
    cells: object  # (N,) each token's cell, or None where every cell holds one (no padding: a stream's windows)

    @classmethod
    def of(cls, seqs, start=0):
        """The rows of documents (token lists), the first at position `start`."""
        lengths = [len(seq) for seq in seqs]
        B, T, N = len(seqs), max(lengths), sum(lengths)
        tokens = np.fromiter(chain.from_iterable(seqs), np.int64, N)
        positions = np.fromiter(chain.from_iterable(range(start, start + n) for n in lengths), np.int64, N)
        documents = np.arange(B, dtype=np.uint32).repeat(lengths)
        cells = None if N == B * T else documents * T + positions - start
        return cls(tokens, positions, documents, (B, T), cells)

    def to_grid(self, x):  # (N, n) -> (B, T, n), zeros on the padding
        if self.cells is None:
            return x.reshape(*self.grid, -1)
        grid = np.zeros((self.grid[0] * self.grid[1], x.shape[-1]), dtype=x.dtype)
        grid[self.cells] = x
        return grid.reshape(*self.grid, -1)

    def from_grid(self, x):  # (B, T, n) -> (N, n): the cells that hold tokens
        x = x.reshape(-1, x.shape[-1])
        return x if self.cells is None else x[self.cells]

    def padding(self):  # (B, T): True on the cells that hold no token; None where there are none
        if self.cells is None:
            return None
        held = np.zeros(self.grid[0] * self.grid[1], dtype=bool)
        held[self.cells] = True
        return ~held.reshape(self.grid)


# ----------------------------------------------------------------------------------------------------------------
# The model: the operations above in the atomic file's order


class Engine(Base):
    """The weights, their gradients and Adam's moments as flat arrays (P,), and a matrix view per tensor."""

    name = "numpy"
    dtypes = ("float64", "float32")

    def __init__(self, cfg, weights, dtype="float64", ablations=()):
        super().__init__(cfg, dtype, ablations)
        keep_freed_memory()  # a step's temporaries reuse the last step's memory (microgpt/allocator.py says why)
        self.p = np.array(weights, dtype=dtype)  # (P,) the weights, in the reference order
        self.g = np.zeros_like(self.p)  # (P,) their gradients
        self.m, self.v = np.zeros_like(self.p), np.zeros_like(self.p)  # (P,) Adam's moments
        self.params, self.grads = self.matrices(self.p), self.matrices(self.g)

    def matrices(self, flat):  # (P,) -> {name: matrix}, views into the flat array; and attn_qkv of every layer
        found = {name: part.reshape(shape) for name, (shape, part) in split(flat, self.cfg).items()}
        for li in range(self.cfg.n_layer):  # attn_wq, attn_wk, attn_wv stacked (3C, C), a view of all three
            found[f"layer{li}.attn_qkv"] = stacked_qkv(flat, self.cfg, li).reshape(3 * self.cfg.n_embd, -1)
        return found

    def load_state(self, weights, m, v):
        for flat, saved in zip((self.p, self.m, self.v), (weights, m, v)):
            flat[:] = np.asarray(saved)

    def kv_cache(self):
        """An empty key/value cache: per layer, the keys and values (1, T, C) of the positions fed."""
        empty = np.zeros((1, 0, self.cfg.n_embd), dtype=self.p.dtype)
        return [[empty, empty] for _ in range(self.cfg.n_layer)]

    def forward_cached(self, tokens, cache):
        return self._forward(Rows.of([tokens], start=cache[0][0].shape[1]), cache).logits.tolist()

    def _forward(self, rows, cache=None, scores_too=False, dropout=None):
        """The Record of a forward pass over the documents of `rows` (Rows): every value (N, ...) a row per token,
        but attention's scores and weights (B, H, T, T), per cell of the grid. `cache` (for one document) holds the
        keys and values (1, T', C) of earlier positions, which this call extends. Attention's scores are kept for a
        trace only: the backward needs the weights alone, and at nanoGPT's size every layer's scores of a batch of 64
        are 100 MB. A piece the model lacks (self.has, microgpt/ablations.py) is skipped, or is the identity. With
        `dropout` (a training step's, microgpt/dropout.py) the record holds its masks, and the values after them."""
        cfg, P, has = self.cfg, self.params, self.has
        padding = None if has.causal_mask else rows.padding()  # (what attention that is not causal must hide)
        masks = {} if dropout is None else self._dropout_masks(rows, dropout)
        embedding = embedding_forward(P["wte"], P["wpe"], rows.tokens, rows.positions if has.position else None)
        embedding = dropout_forward(embedding, masks.get((EMBEDDING, 0)))  # (N, C)
        x = embedding_norm = rmsnorm_forward(embedding) if has.rmsnorm else embedding
        layers, C = [], cfg.n_embd
        for li in range(cfg.n_layer):
            L = f"layer{li}."
            attention, attn_residual = (None,) * 8, x  # (no attention block: the stream passes by)
            if has.attention:
                attn_norm = rmsnorm_forward(x) if has.rmsnorm else x
                qkv = linear_forward(attn_norm, P[L + "attn_qkv"])  # (N, 3C): one product for the three
                q, k, v = qkv[:, :C], qkv[:, C:2 * C], qkv[:, 2 * C:]
                grid = rows.to_grid(qkv)  # (B, T, 3C)
                queries, keys, values = grid[..., :C], grid[..., C:2 * C], grid[..., 2 * C:]
                if cache is not None:
                    keys = cache[li][0] = np.concatenate([cache[li][0], keys], axis=1)
                    values = cache[li][1] = np.concatenate([cache[li][1], values], axis=1)
                out, scores, weights = attention_forward(queries, keys, values, cfg.n_head, self.attn_scale,
                                                         has.causal_mask, masks.get((ATTENTION_WEIGHTS, li)), padding)
                heads = rows.from_grid(out)  # (N, C)
                proj = dropout_forward(linear_forward(heads, P[L + "attn_wo"]), masks.get((ATTENTION_OUTPUT, li)))
                attn_residual = proj + x if has.residual else proj
                attention = (attn_norm, q, k, v, scores if scores_too else None, weights, heads, proj)
            mlp, x = (None,) * 4, attn_residual  # (no MLP block: the stream passes by)
            if has.mlp:
                mlp_norm = rmsnorm_forward(attn_residual) if has.rmsnorm else attn_residual
                fc1 = linear_forward(mlp_norm, P[L + "mlp_fc1"])  # (N, 4C)
                relu = relu_forward(fc1) if has.relu else fc1
                fc2 = dropout_forward(linear_forward(relu, P[L + "mlp_fc2"]), masks.get((MLP_OUTPUT, li)))
                mlp, x = (mlp_norm, fc1, relu, fc2), fc2 + attn_residual if has.residual else fc2
            layers.append(Layer(*attention, attn_residual, *mlp, x))
        return Record(embedding, embedding_norm, layers, linear_forward(x, P["lm_head"]), masks)  # logits (N, V)

    def _dropout_masks(self, rows, dropout):
        """{(place, layer): mask} of a training step's dropout over `rows` (Rows): the embedding's, attention's and
        the MLP's outputs' (N, C), a row per token; the attention weights' (B, H, T, T), per cell of the grid."""
        C, H, S, has, dtype = self.cfg.n_embd, self.cfg.n_head, self.cfg.block_size, self.has, self.p.dtype
        arange = partial(np.arange, dtype=np.uint32)
        B, T = rows.grid
        token_documents = rows.documents[:, None]  # (N, 1)
        token_coordinates = coordinates((S, C), (C, 1), arange)[rows.positions]  # (N, C)
        grid_documents = arange(B).reshape(B, 1, 1, 1)
        grid_coordinates = coordinates((H, T, T), (S * S, S, 1), arange)  # broadcasts to (H, T, T)

        def activations(key):  # (N, C)
            return dropout_mask(dropout, key, token_documents, token_coordinates, dtype)

        masks = {(EMBEDDING, 0): activations(dropout.key(EMBEDDING))}
        for li in range(self.cfg.n_layer):
            if has.attention:
                masks[ATTENTION_WEIGHTS, li] = dropout_mask(dropout, dropout.key(ATTENTION_WEIGHTS, li), grid_documents,
                                                            grid_coordinates, dtype)
                masks[ATTENTION_OUTPUT, li] = activations(dropout.key(ATTENTION_OUTPUT, li))
            if has.mlp:
                masks[MLP_OUTPUT, li] = activations(dropout.key(MLP_OUTPUT, li))
        return masks

    def _loss(self, batch, dropout=None):
        """The mean loss of a batch (each document cut to block_size + 1 tokens), and what the backward needs."""
        seqs = [doc[:self.cfg.block_size + 1] for doc in batch]
        inputs = Rows.of([seq[:-1] for seq in seqs])
        record = self._forward(inputs, dropout=dropout)
        targets = np.fromiter(chain.from_iterable(seq[1:] for seq in seqs), np.int64, len(inputs.tokens))
        losses, probs = cross_entropy_forward(record.logits, targets)
        share = 1 / len(targets)  # each token's share of the loss
        return float(losses.sum() * share), inputs, record, probs, targets, share

    @np.errstate(all="ignore")  # a diverged model gives inf or nan, which the trainer reports
    def loss(self, batch):
        return self._loss(batch)[0]

    @np.errstate(all="ignore")
    def loss_and_grads(self, batch, dropout=None):
        """The mean loss of a batch, and its gradient with respect to every weight into self.g."""
        cfg, P, G, has = self.cfg, self.params, self.grads, self.has
        self.g[:] = 0.0
        loss, inputs, record, probs, targets, dloss = self._loss(batch, dropout)
        masks = record.masks
        dlogits = cross_entropy_backward(probs, targets, dloss)
        dx = linear_backward(dlogits, record.stream(cfg.n_layer), P["lm_head"], G["lm_head"])
        for li in reversed(range(cfg.n_layer)):
            L, layer = f"layer{li}.", record.layers[li]
            if has.mlp:  # x_out = attn_residual + mlp_fc2(relu(mlp_fc1(rmsnorm(attn_residual)))): dx into both
                dfc2 = dropout_backward(dx, masks.get((MLP_OUTPUT, li)))
                drelu = linear_backward(dfc2, layer.mlp_relu, P[L + "mlp_fc2"], G[L + "mlp_fc2"])
                dfc1 = relu_backward(drelu, layer.mlp_fc1) if has.relu else drelu
                dnorm = linear_backward(dfc1, layer.mlp_norm, P[L + "mlp_fc1"], G[L + "mlp_fc1"])
                dbranch = rmsnorm_backward(dnorm, layer.attn_residual) if has.rmsnorm else dnorm
                dx = dbranch + dx if has.residual else dbranch
            if has.attention:  # attn_residual = x + attn_wo(attention(q, k, v)), q, k, v projections of rmsnorm(x)
                dproj = dropout_backward(dx, masks.get((ATTENTION_OUTPUT, li)))
                dheads = linear_backward(dproj, layer.attn_heads, P[L + "attn_wo"], G[L + "attn_wo"])
                on_grid = map(inputs.to_grid, (dheads, layer.attn_q, layer.attn_k, layer.attn_v))  # (B, T, C) each
                dq, dk, dv = attention_backward(*on_grid, layer.attn_weights, cfg.n_head, self.attn_scale,
                                                masks.get((ATTENTION_WEIGHTS, li)))
                dqkv = inputs.from_grid(np.concatenate([dq, dk, dv], axis=-1))  # (N, 3C), as the forward's product
                dnorm = linear_backward(dqkv, layer.attn_norm, P[L + "attn_qkv"], G[L + "attn_qkv"])
                dbranch = rmsnorm_backward(dnorm, record.stream(li)) if has.rmsnorm else dnorm
                dx = dbranch + dx if has.residual else dbranch
        dx = dropout_backward(rmsnorm_backward(dx, record.embedding) if has.rmsnorm else dx, masks.get((EMBEDDING, 0)))
        embedding_backward(dx, inputs.tokens, inputs.positions if has.position else None, G["wte"], G["wpe"])
        return loss

    def clip_grads(self, max_norm):
        norm = math.sqrt(sum(square_sum(g) for (g,) in in_chunks(self.g)))
        if norm > max_norm:
            self.g *= max_norm / norm
        return norm

    def adam_step(self, step, lr_t, beta1=0.85, beta2=0.99, eps=1e-8, weight_decay=0.0):
        for p, g, m, v in in_chunks(self.p, self.g, self.m, self.v):
            adam_update(p, g, m, v, step, lr_t, beta1, beta2, eps, weight_decay)

    @np.errstate(all="ignore")
    def record(self, tokens):
        """The Record of one forward pass over `tokens` (T,), every intermediate an array (T, ...) or (H, T, T)."""
        record = self._forward(Rows.of([tokens]), scores_too=True)  # one document: its attention is the first
        return record._replace(masks=None, layers=[layer._replace(attn_scores=layer.attn_scores[0],
                                                                  attn_weights=layer.attn_weights[0])
                                                   if layer.attn_weights is not None else layer
                                                   for layer in record.layers])

    # -- the engine's arithmetic for the flat arrays and the health statistics (engines/base.py) ----------------------

    def _export(self, flat):
        return flat

    def flat(self, x):
        return x.shape, np.ascontiguousarray(x).ravel()

    def _norms(self, flat):
        return [math.sqrt(square_sum(part)) for _, part in split(flat, self.cfg).values()]

    def _copy(self, flat):
        return flat.copy()

    def _minus(self, a, b):
        return a - b

    def _rms(self, x):
        return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))

    def _dead(self, relu):
        return float(np.mean(~(relu != 0).any(axis=0)))

    def _collapsed(self, weights):
        seeing_two = weights[:, 1:, :]  # (H, T - 1, T): the queries after the first (which, causal, sees one key)
        return np.flatnonzero((seeing_two.max(axis=-1) >= health.COLLAPSED).all(axis=-1)).tolist() \
            if seeing_two.shape[1] else []

    def _finite(self, x, masked=False):
        return bool(np.all(np.isfinite(x) | (masked & (x == -np.inf))))


"""The numpy engine: the python engine's operations, pair for pair and name for name, on float64 arrays.

Each `*_forward` / `*_backward` pair here computes what the pair of the same name in microgpt/engines/python.py
computes, with the same parameters and the same conventions (a backward returns dx and adds into the dw it is
given), with whole arrays instead of loops: lay the two files side by side. Documents of a batch are padded to one
length T and the loss ignores the padding; causal attention keeps real tokens from ever seeing the padding (and
attention that is not, `--ablate causal-mask`, hides it), so it receives no gradient. All weights live in one flat
array (and so do their gradients and Adam's moments): a matrix is a view into it, and Adam is a few whole-array
operations. float64 by default, so the numbers agree with the
atomic file to rounding (float32 on request: about twice as fast, and agrees to about 1e-6).

Shapes: B = documents in the batch, T = tokens per document (padded), C = n_embd, H = n_head,
D = head_dim = C // H, V = vocab_size, P = parameters.
"""
import math
from functools import partial

import numpy as np

from microgpt import health
from microgpt.allocator import keep_freed_memory
from microgpt.dropout import ATTENTION_OUTPUT, ATTENTION_WEIGHTS, EMBEDDING, MLP_OUTPUT, coordinates, kept
from microgpt.engines.base import Engine as Base
from microgpt.engines.base import Layer, Record, in_chunks
from microgpt.layout import split, stacked_qkv

# ----------------------------------------------------------------------------------------------------------------
# The operations, each a forward/backward pair


def embedding_forward(wte, wpe, tokens, positions):  # tokens (B, T), positions (T,) or None (no wpe) -> (B, T, C)
    return wte[tokens] if positions is None else wte[tokens] + wpe[positions]


def embedding_backward(dx, tokens, positions, dwte, dwpe):  # dx (B, T, C): each row into dwte[token], dwpe[position]
    np.add.at(dwte, tokens, dx)  # a token that occurs twice gets both gradients
    if positions is not None:
        dwpe[positions] += dx.sum(axis=0)


def rms_scale(x):  # (B, T, C) -> (B, T, 1): (mean(x^2) + 1e-5)^-1/2, the reference's arithmetic
    return ((x * x).sum(axis=-1, keepdims=True) * x.shape[-1] ** -1 + 1e-5) ** -0.5


def rmsnorm_forward(x):  # (B, T, C) -> (B, T, C), each row scaled to unit root-mean-square
    return x * rms_scale(x)


def rmsnorm_backward(dy, x):  # dx = s * dy - (s^3 / C) * (dy . x) * x
    scale = rms_scale(x)
    return scale * dy - (scale**3 * x.shape[-1] ** -1) * (dy * x).sum(axis=-1, keepdims=True) * x


def linear_forward(x, w):  # x (B, T, nin), w (nout, nin) -> (B, T, nout)
    return (rows(x) @ w.T).reshape(*x.shape[:-1], w.shape[0])


def linear_backward(dy, x, w, dw):  # dy (B, T, nout) -> dx (B, T, nin); adds dy^T x into dw (nout, nin)
    dw += rows(dy).T @ rows(x)
    return (rows(dy) @ w).reshape(*dy.shape[:-1], w.shape[1])


def rows(x):  # (B, T, n) -> (B * T, n): one matrix product for the whole batch, not B small ones (2.5 times as fast)
    return x.reshape(-1, x.shape[-1])


def relu_forward(x):
    return np.maximum(x, 0.0)


def relu_backward(dy, x):  # the gradient passes where the input was positive
    return dy * (x > 0)


def dropout_forward(x, mask):  # x times its mask (0, or 1 / (1 - p) where kept), of the same shape
    return x if mask is None else x * mask


def dropout_backward(dy, mask):  # a product with constants: the gradient is multiplied by them too
    return dropout_forward(dy, mask)


def dropout_mask(dropout, key, documents, shape, strides, dtype):
    """(B, *shape): dropout.scale where the activation of documents[b] (B,) at coordinate sum(index * stride) is kept,
    0 where dropped (microgpt/dropout.py). documents and coordinates are uint32: half the memory of int64, and
    their products wrap at 32 bits, as the hash wants."""
    coordinate = coordinates(shape, strides, partial(np.arange, dtype=np.uint32))
    documents = documents.reshape((-1,) + (1,) * len(shape))
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


def cross_entropy_forward(logits, targets):  # logits (B, T, V), targets (B, T) -> losses (B, T), probs (B, T, V)
    probs = softmax(logits)
    losses = -np.log(probs[at_targets(targets)])
    underflowed = np.isinf(losses)  # p = 0: -log softmax from the logits, log(sum(exp(z - max))) - (z_t - max)
    if underflowed.any():
        z = logits - logits.max(axis=-1, keepdims=True)
        losses = np.where(underflowed, np.log(np.exp(z).sum(axis=-1)) - z[at_targets(targets)], losses)
    return losses, probs


def cross_entropy_backward(probs, targets, dloss):  # dloss (B, T): 1/N where a token counts, 0 on padding
    dlogits = probs.copy()  # dlogits = probs - one_hot(target), scaled by dloss
    dlogits[at_targets(targets)] -= 1.0
    return dlogits * dloss[..., None]


def at_targets(targets):  # the index of probs[b, t, targets[b, t]] for every b, t
    B, T = targets.shape
    return np.arange(B)[:, None], np.arange(T), targets


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
        return self._forward(np.array([tokens]), cache).logits[0].tolist()

    def _forward(self, tokens, cache=None, scores_too=False, padding=None, dropout=None):
        """The Record of a forward pass over documents, token rows (B, T) padded to one length (padding (B, T): True
        on the padding, given when attention is not causal); `cache` (for one document) holds the keys and values of
        earlier positions, which this call extends. Attention's scores are kept for a trace only: the backward needs
        the weights alone, and at nanoGPT's size every layer's scores of a batch of 64 are 100 MB. A piece the model
        lacks (self.has, microgpt/ablations.py) is skipped, or is the identity. With `dropout` (a training step's,
        microgpt/dropout.py) the record holds its masks, and the values after them."""
        cfg, P, has = self.cfg, self.params, self.has
        start = cache[0][0].shape[1] if cache is not None else 0
        positions = np.arange(start, start + tokens.shape[1]) if has.position else None
        masks = {} if dropout is None else self._dropout_masks(*tokens.shape, dropout)
        embedding = embedding_forward(P["wte"], P["wpe"], tokens, positions)
        embedding = dropout_forward(embedding, masks.get((EMBEDDING, 0)))  # (B, T, C)
        x = embedding_norm = rmsnorm_forward(embedding) if has.rmsnorm else embedding
        layers, C = [], cfg.n_embd
        for li in range(cfg.n_layer):
            L = f"layer{li}."
            attention, attn_residual = (None,) * 8, x  # (no attention block: the stream passes by)
            if has.attention:
                attn_norm = rmsnorm_forward(x) if has.rmsnorm else x
                qkv = linear_forward(attn_norm, P[L + "attn_qkv"])  # (B, T, 3C): one product for the three
                q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
                keys, values = k, v
                if cache is not None:
                    keys = cache[li][0] = np.concatenate([cache[li][0], k], axis=1)
                    values = cache[li][1] = np.concatenate([cache[li][1], v], axis=1)
                heads, scores, weights = attention_forward(q, keys, values, cfg.n_head, self.attn_scale,
                                                           has.causal_mask, masks.get((ATTENTION_WEIGHTS, li)), padding)
                proj = dropout_forward(linear_forward(heads, P[L + "attn_wo"]), masks.get((ATTENTION_OUTPUT, li)))
                attn_residual = proj + x if has.residual else proj
                attention = (attn_norm, q, k, v, scores if scores_too else None, weights, heads, proj)
            mlp, x = (None,) * 4, attn_residual  # (no MLP block: the stream passes by)
            if has.mlp:
                mlp_norm = rmsnorm_forward(attn_residual) if has.rmsnorm else attn_residual
                fc1 = linear_forward(mlp_norm, P[L + "mlp_fc1"])  # (B, T, 4C)
                relu = relu_forward(fc1) if has.relu else fc1
                fc2 = dropout_forward(linear_forward(relu, P[L + "mlp_fc2"]), masks.get((MLP_OUTPUT, li)))
                mlp, x = (mlp_norm, fc1, relu, fc2), fc2 + attn_residual if has.residual else fc2
            layers.append(Layer(*attention, attn_residual, *mlp, x))
        return Record(embedding, embedding_norm, layers, linear_forward(x, P["lm_head"]), masks)  # logits (B, T, V)

    def _dropout_masks(self, B, T, dropout):
        """{(place, layer): mask} of a training step's dropout over documents (B, T): the embedding's,
        attention's and the MLP's outputs' (B, T, C), the attention weights' (B, H, T, T)."""
        C, H, S, has, dtype = self.cfg.n_embd, self.cfg.n_head, self.cfg.block_size, self.has, self.p.dtype
        documents = np.arange(B, dtype=np.uint32)

        def activations(key):  # (B, T, C)
            return dropout_mask(dropout, key, documents, (T, C), (C, 1), dtype)

        masks = {(EMBEDDING, 0): activations(dropout.key(EMBEDDING))}
        for li in range(self.cfg.n_layer):
            if has.attention:
                masks[ATTENTION_WEIGHTS, li] = dropout_mask(dropout, dropout.key(ATTENTION_WEIGHTS, li), documents,
                                                            (H, T, T), (S * S, S, 1), dtype)
                masks[ATTENTION_OUTPUT, li] = activations(dropout.key(ATTENTION_OUTPUT, li))
            if has.mlp:
                masks[MLP_OUTPUT, li] = activations(dropout.key(MLP_OUTPUT, li))
        return masks

    def _loss(self, batch, dropout=None):
        """The mean loss over every predicted token of a batch of documents (each cut to block_size + 1 tokens, padded
        to the longest), and what the backward needs: the inputs, the record, the probabilities, the targets, each
        token's share (0 on padding)."""
        seqs = [doc[:self.cfg.block_size + 1] for doc in batch]
        T = max(len(seq) for seq in seqs) - 1
        padded = np.zeros((len(seqs), T + 1), dtype=np.int64)
        counts = np.zeros((len(seqs), T), dtype=self.p.dtype)  # 1 where a token is predicted, 0 on padding
        for b, seq in enumerate(seqs):
            padded[b, :len(seq)] = seq
            counts[b, :len(seq) - 1] = 1.0
        inputs, targets = padded[:, :-1], padded[:, 1:]
        record = self._forward(inputs, padding=None if self.has.causal_mask else counts == 0, dropout=dropout)
        losses, probs = cross_entropy_forward(record.logits, targets)
        loss = float((losses * counts).sum() * (1 / counts.sum()))
        return loss, inputs, record, probs, targets, counts * (1 / counts.sum())

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
                dq, dk, dv = attention_backward(dheads, layer.attn_q, layer.attn_k, layer.attn_v, layer.attn_weights,
                                                cfg.n_head, self.attn_scale, masks.get((ATTENTION_WEIGHTS, li)))
                dqkv = np.concatenate([dq, dk, dv], axis=-1)  # (B, T, 3C), as the forward's one product made them
                dnorm = linear_backward(dqkv, layer.attn_norm, P[L + "attn_qkv"], G[L + "attn_qkv"])
                dbranch = rmsnorm_backward(dnorm, record.stream(li)) if has.rmsnorm else dnorm
                dx = dbranch + dx if has.residual else dbranch
        dx = dropout_backward(rmsnorm_backward(dx, record.embedding) if has.rmsnorm else dx, masks.get((EMBEDDING, 0)))
        positions = np.arange(inputs.shape[1]) if has.position else None
        embedding_backward(dx, inputs, positions, G["wte"], G["wpe"])
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
        """The Record of one forward pass over `tokens` (T,), every intermediate an array without the batch axis."""
        record = self._forward(np.array([tokens]), scores_too=True)
        return Record(record.embedding[0], record.embedding_norm[0],
                      [Layer(*(None if x is None else x[0] for x in layer)) for layer in record.layers],
                      record.logits[0])

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


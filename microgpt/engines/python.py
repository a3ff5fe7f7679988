"""The python engine: the atomic file's model in plain Python, one operation on whole vectors at a time.

Where the atomic file makes a Value for every scalar and lets backward() find the chain rule, this engine writes
each operation as a pair, `*_forward` and `*_backward`, the way llm.c does: the model keeps what the forwards
return (the Record of engines/base.py), and a backward turns the gradient of an output (dy) into the gradient of
the input (dx), which it returns, and of the weights, which it adds into the buffers it is given (dw). The
arithmetic is the reference's, so the numbers agree with the atomic file to rounding, about 1e-15. numpy.py is
this file again on arrays, function for function. Standard library only, Python 3.9 and PyPy.

Shapes: N = tokens of a batch (its documents end to end), T = tokens of one document, C = n_embd, H = n_head,
D = head_dim = C // H, V = vocab_size, P = parameters; a matrix is a list of rows (a backward adds into dw by
giving it new rows, each the old one plus the gradient: faster in Python than changing a row in place).
"""
import math
from itertools import accumulate, chain
from operator import add, mul

from microgpt.dropout import ATTENTION_OUTPUT, ATTENTION_WEIGHTS, EMBEDDING, MLP_OUTPUT, kept
from microgpt.engines.base import Engine as Base
from microgpt.engines.base import Layer, Record

# ----------------------------------------------------------------------------------------------------------------
# The operations, each a forward/backward pair


def embedding_forward(wte, wpe, tokens, positions):  # tokens, positions (N,) or None (no wpe) -> (N, C)
    if positions is None:
        return [list(wte[t]) for t in tokens]
    return [list(map(add, wte[t], wpe[p])) for t, p in zip(tokens, positions)]


def embedding_backward(dx, tokens, positions, dwte, dwpe):  # dx (N, C): each row into dwte[token], dwpe[position]
    for row, t in zip(dx, tokens):
        dwte[t] = list(map(add, dwte[t], row))
    for row, p in zip(dx, positions or ()):
        dwpe[p] = list(map(add, dwpe[p], row))


def rms_scale(x):  # (N, C) -> (N,): (mean(x^2) + 1e-5)^-1/2, the reference's arithmetic
    n_inv = len(x[0]) ** -1
    return [(sum(map(mul, row, row)) * n_inv + 1e-5) ** -0.5 for row in x]


def rmsnorm_forward(x):  # (N, C) -> (N, C), each row scaled to unit root-mean-square
    return [[xi * s for xi in row] for row, s in zip(x, rms_scale(x))]


def rmsnorm_backward(dy, x):  # dy (N, C) -> dx (N, C)
    # y = x * s with s = (mean(x^2) + eps)^-1/2, so dx = s * dy - (s^3 / C) * (dy . x) * x
    n_inv = len(x[0]) ** -1
    dx = []
    for dy_row, x_row, s in zip(dy, x, rms_scale(x)):
        c = s * s * s * n_inv * sum(map(mul, dy_row, x_row))
        dx.append([s * g - c * xi for g, xi in zip(dy_row, x_row)])
    return dx


def linear_forward(x, w):  # x (N, nin), w (nout, nin) -> (N, nout)
    return [[sum(map(mul, w_row, x_row)) for w_row in w] for x_row in x]


def linear_backward(dy, x, w, dw):  # dy (N, nout) -> dx (N, nin); adds dy^T x into dw (nout, nin)
    w_cols = list(zip(*w))  # (nin, nout)
    dx = [[sum(map(mul, dy_row, col)) for col in w_cols] for dy_row in dy]
    # dw[i] += dy[t][i] * x[t], token by token; a zero dy[t][i] (a ReLU that was off) adds nothing: skipped
    for dy_row, x_row in zip(dy, x):
        for i, g in enumerate(dy_row):
            if g:
                dw[i] = [a + g * b for a, b in zip(dw[i], x_row)]
    return dx


def relu_forward(x):  # (N, n) -> (N, n)
    return [[xi if xi > 0 else 0.0 for xi in row] for row in x]


def relu_backward(dy, x):  # the gradient passes where the input was positive
    return [[g if xi > 0 else 0.0 for g, xi in zip(dy_row, x_row)] for dy_row, x_row in zip(dy, x)]


def matadd(a, b):  # (N, n) + (N, n): a residual connection, or two gradients of one tensor summed
    return [list(map(add, a_row, b_row)) for a_row, b_row in zip(a, b)]


def dropout_forward(x, mask):  # (N, n) * (N, n): each activation times its mask (0, or 1 / (1 - p) where kept)
    return x if mask is None else [list(map(mul, row, mask_row)) for row, mask_row in zip(x, mask)]


def dropout_backward(dy, mask):  # a product with constants: the gradient is multiplied by them too
    return dropout_forward(dy, mask)


def dropout_mask(dropout, key, document, rows, cols, first=0, stride=None):
    """(rows, cols): dropout.scale where the activation at coordinate first + r * stride + c (stride: cols unless
    given) of `document` is kept, 0.0 where dropped (microgpt/dropout.py)."""
    stride, scale = stride or cols, dropout.scale
    return [[scale if kept(dropout.p, key, document, first + r * stride + c) else 0.0 for c in range(cols)]
            for r in range(rows)]


def softmax(z):  # (n,) -> (n,), the reference's arithmetic: exp(z - max) * (sum)^-1
    mx = max(z)
    e = [math.exp(zi - mx) for zi in z]
    inv = sum(e) ** -1
    return [ei * inv for ei in e]


def attention_forward(q, k, v, n_head, scale, causal, dropped=None):
    """Self-attention of one sequence, scores scaled by `scale`. q (Tq, C); k, v (Tk, C) with Tk >= Tq: the queries
    are the last Tq positions (earlier keys and values come from a cache), so, causal, query i sees keys
    0 ... Tk - Tq + i (else every key). dropped (H, Tq, Tk): the weights' dropout masks, in training. Returns out
    (Tq, C) and the scores and weights (H, Tq, Tk) (before dropout), -inf and 0 where the key is in the future."""
    D = len(q[0]) // n_head
    out, scores, weights = [[] for _ in q], [], []
    for h in range(n_head):
        lo, hi = h * D, (h + 1) * D
        k_h = [row[lo:hi] for row in k]  # (Tk, D)
        v_cols = list(zip(*[row[lo:hi] for row in v]))  # (D, Tk)
        scores_h, weights_h = [], []
        for i, q_row in enumerate(q):
            q_hi, seen = q_row[lo:hi], len(k) - len(q) + 1 + i if causal else len(k)  # it sees keys 0 ... seen - 1
            s = [sum(map(mul, q_hi, k_t)) * scale for k_t in k_h[:seen]]
            w = softmax(s)
            w_kept = w if dropped is None else list(map(mul, w, dropped[h][i]))  # (map stops at the keys seen)
            out[i] += [sum(map(mul, w_kept, v_col)) for v_col in v_cols]
            scores_h.append(s + [-math.inf] * (len(k) - seen))
            weights_h.append(w + [0.0] * (len(k) - seen))
        scores.append(scores_h)
        weights.append(weights_h)
    return out, scores, weights


def attention_backward(dout, q, k, v, weights, n_head, scale, causal, dropped=None):
    """dout (Tq, C) -> dq (Tq, C), dk, dv (Tk, C); dropped: the forward's dropout masks of the weights, or None."""
    D = len(q[0]) // n_head
    Tk = len(k)
    dq, dk, dv = [[] for _ in q], [[] for _ in k], [[] for _ in k]
    for h in range(n_head):
        lo, hi = h * D, (h + 1) * D
        q_h, g_h = [row[lo:hi] for row in q], [row[lo:hi] for row in dout]  # (Tq, D)
        k_h, v_h = [row[lo:hi] for row in k], [row[lo:hi] for row in v]  # (Tk, D)
        k_cols = list(zip(*k_h))  # (D, Tk)
        dscores = []  # (Tq, keys seen): the gradient of each score
        for i, (g, w) in enumerate(zip(g_h, weights[h])):
            seen = Tk - len(q) + 1 + i if causal else Tk
            dw = [sum(map(mul, g, v_t)) for v_t in v_h[:seen]]  # d(loss)/d(weight of key t), as the values saw it
            dw = dw if dropped is None else list(map(mul, dw, dropped[h][i]))
            centre = sum(map(mul, w, dw))  # softmax backward: ds_t = w_t * (dw_t - sum_s w_s dw_s)
            dscores.append([w_t * (dw_t - centre) * scale for w_t, dw_t in zip(w, dw)])
        for i, ds in enumerate(dscores):
            dq[i] += [sum(map(mul, ds, k_col)) for k_col in k_cols]
        # dv[t] = sum_i w_i[t] g_i and dk[t] = sum_i ds_i[t] q_i: the keys' columns, zeros where i does not see t
        applied = weights[h] if dropped is None else dropout_forward(weights[h], dropped[h])  # (Tq, Tk)
        w_cols = list(zip(*applied))  # (Tk, Tq)
        ds_cols = list(zip(*[ds + [0.0] * (Tk - len(ds)) for ds in dscores]))
        g_cols, q_cols = list(zip(*g_h)), list(zip(*q_h))  # (D, Tq)
        for t in range(Tk):
            dv[t] += [sum(map(mul, w_cols[t], g_col)) for g_col in g_cols]
            dk[t] += [sum(map(mul, ds_cols[t], q_col)) for q_col in q_cols]
    return dq, dk, dv


def cross_entropy_forward(logits, targets):  # logits (N, V), targets (N,) -> losses (N,), probs (N, V)
    probs = [softmax(row) for row in logits]
    # -log p, the reference's; where p underflows to 0 (a logit hundreds below the largest), from the logits instead
    return [-math.log(p[t]) if p[t] else log_softmax_loss(row, t) for p, t, row in zip(probs, targets, logits)], probs


def log_softmax_loss(z, t):  # -log softmax(z)[t] = log(sum(exp(z - max))) - (z_t - max), as torch's cross_entropy does
    mx = max(z)
    return math.log(sum(math.exp(zi - mx) for zi in z)) - (z[t] - mx)


def cross_entropy_backward(probs, targets, dloss):  # d(loss)/d(logits) = dloss * (probs - one_hot)
    dlogits = []
    for p, t in zip(probs, targets):
        row = [dloss * pi for pi in p]
        row[t] = dloss * (p[t] - 1.0)
        dlogits.append(row)
    return dlogits


def adam_update(p, g, m, v, step, lr_t, beta1, beta2, eps, weight_decay):
    """AdamW on every parameter, in place on flat lists (P,): the decoupled decay first, then the reference's
    expressions in the reference's order (m, v: running means of g and g^2; bias1, bias2 undo their zero start)."""
    if weight_decay:
        p[:] = [pi - lr_t * weight_decay * pi for pi in p]
    c1, c2 = 1 - beta1, 1 - beta2
    bias1, bias2 = 1 - beta1 ** (step + 1), 1 - beta2 ** (step + 1)
    for i, gi in enumerate(g):
        m[i] = mi = beta1 * m[i] + c1 * gi
        v[i] = vi = beta2 * v[i] + c2 * gi**2
        p[i] -= lr_t * (mi / bias1) / ((vi / bias2) ** 0.5 + eps)


# ----------------------------------------------------------------------------------------------------------------
# The model: the operations above in the atomic file's order


class Engine(Base):
    """The weights, their gradients and Adam's moments as flat lists (P,), and a matrix per tensor copied out."""

    name = "python"
    dtypes = ("float64",)

    def __init__(self, cfg, weights, dtype="float64", ablations=()):
        super().__init__(cfg, dtype, ablations)
        self.p = [float(x) for x in weights]  # (P,) the weights, in the reference order
        self.g = [0.0] * len(self.p)  # (P,) their gradients
        self.m, self.v = [0.0] * len(self.p), [0.0] * len(self.p)  # (P,) Adam's moments
        self.params = self.matrices(self.p)

    def matrices(self, flat):  # (P,) -> {name: matrix}, rows copied out of the flat list; and attn_qkv of every layer
        found = {name: [flat[start + r * cols:start + (r + 1) * cols] for r in range(rows)]
                 for name, (start, (rows, cols)) in self.segments.items()}
        for li in range(self.cfg.n_layer):  # attn_wq, attn_wk, attn_wv stacked (3C, C): the same row lists
            L = f"layer{li}."
            found[L + "attn_qkv"] = found[L + "attn_wq"] + found[L + "attn_wk"] + found[L + "attn_wv"]
        return found

    def load_state(self, weights, m, v):
        self.p, self.m, self.v = ([float(x) for x in flat] for flat in (weights, m, v))
        self.params = self.matrices(self.p)

    def kv_cache(self):
        """An empty key/value cache: per layer, the key rows and value rows of the positions fed."""
        return [[[], []] for _ in range(self.cfg.n_layer)]

    def forward_cached(self, tokens, cache):
        return self._forward([tokens], cache).logits

    def _forward(self, seqs, cache=None, scores_too=False, dropout=None):
        """The Record of a forward pass over documents (token lists) laid end to end (N rows), each attending within
        itself; `cache` (for one document) holds earlier positions' keys and values, which this call extends.
        Attention's weights (and, for a trace only, scores: the backward does not need them) are per document.
        A piece the model lacks (self.has, microgpt/ablations.py) is skipped, or is the identity. With `dropout` (a
        training step's, microgpt/dropout.py) the record holds its masks, and the values after them."""
        cfg, P, has = self.cfg, self.params, self.has
        start = len(cache[0][0]) if cache is not None else 0
        bounds = list(accumulate(map(len, seqs), initial=0))  # where each document starts and ends in the N rows
        tokens = [t for seq in seqs for t in seq]
        positions = [start + i for seq in seqs for i in range(len(seq))] if has.position else None
        masks = {} if dropout is None else self._dropout_masks(seqs, dropout)
        embedding = embedding_forward(P["wte"], P["wpe"], tokens, positions)
        embedding = dropout_forward(embedding, masks.get((EMBEDDING, 0)))  # (N, C)
        x = embedding_norm = rmsnorm_forward(embedding) if has.rmsnorm else embedding
        layers, C = [], cfg.n_embd
        for li in range(cfg.n_layer):
            L = f"layer{li}."
            attention, attn_residual = (None,) * 8, x  # (no attention block: the stream passes by)
            if has.attention:
                attn_norm = rmsnorm_forward(x) if has.rmsnorm else x
                qkv = linear_forward(attn_norm, P[L + "attn_qkv"])  # (N, 3C): one product for the three
                q, k, v = [row[:C] for row in qkv], [row[C:2 * C] for row in qkv], [row[2 * C:] for row in qkv]
                documents = [(q[a:b], k[a:b], v[a:b]) for a, b in zip(bounds, bounds[1:])]
                if cache is not None:  # one document: its queries see the cached keys and values too
                    cache[li] = [cache[li][0] + k, cache[li][1] + v]
                    documents = [(q, *cache[li])]
                dropped = masks.get((ATTENTION_WEIGHTS, li), [None] * len(documents))  # per document
                attended = [attention_forward(*document, cfg.n_head, self.attn_scale, has.causal_mask, document_dropped)
                            for document, document_dropped in zip(documents, dropped)]
                heads = [row for out, _, _ in attended for row in out]  # (N, C)
                scores, weights = [s for _, s, _ in attended], [w for _, _, w in attended]  # per document (H, T, T)
                proj = dropout_forward(linear_forward(heads, P[L + "attn_wo"]), masks.get((ATTENTION_OUTPUT, li)))
                attn_residual = matadd(proj, x) if has.residual else proj
                attention = (attn_norm, q, k, v, scores if scores_too else None, weights, heads, proj)
            mlp, x = (None,) * 4, attn_residual  # (no MLP block: the stream passes by)
            if has.mlp:
                mlp_norm = rmsnorm_forward(attn_residual) if has.rmsnorm else attn_residual
                fc1 = linear_forward(mlp_norm, P[L + "mlp_fc1"])  # (N, 4C)
                relu = relu_forward(fc1) if has.relu else fc1
                fc2 = dropout_forward(linear_forward(relu, P[L + "mlp_fc2"]), masks.get((MLP_OUTPUT, li)))  # (N, C)
                mlp, x = (mlp_norm, fc1, relu, fc2), matadd(fc2, attn_residual) if has.residual else fc2
            layers.append(Layer(*attention, attn_residual, *mlp, x))
        return Record(embedding, embedding_norm, layers, linear_forward(x, P["lm_head"]), masks)  # logits (N, V)

    def _dropout_masks(self, seqs, dropout):
        """{(place, layer): mask} of a training step's dropout: the embedding's, attention's and the MLP's
        outputs' (N, C), end to end like the rows; the attention weights', a list of (H, T, T), one per document."""
        C, H, S, has = self.cfg.n_embd, self.cfg.n_head, self.cfg.block_size, self.has

        def activations(key):  # (N, C): each document's positions
            return [row for d, seq in enumerate(seqs) for row in dropout_mask(dropout, key, d, len(seq), C)]

        masks = {(EMBEDDING, 0): activations(dropout.key(EMBEDDING))}
        for li in range(self.cfg.n_layer):
            if has.attention:
                key = dropout.key(ATTENTION_WEIGHTS, li)
                masks[ATTENTION_WEIGHTS, li] = [[dropout_mask(dropout, key, d, len(seq), len(seq), h * S * S, S)
                                                 for h in range(H)] for d, seq in enumerate(seqs)]
                masks[ATTENTION_OUTPUT, li] = activations(dropout.key(ATTENTION_OUTPUT, li))
            if has.mlp:
                masks[MLP_OUTPUT, li] = activations(dropout.key(MLP_OUTPUT, li))
        return masks

    def _loss(self, batch, dropout=None):
        """The mean loss of a batch (each document cut to block_size + 1 tokens), and what the backward needs."""
        seqs = [doc[:self.cfg.block_size + 1] for doc in batch]
        inputs = [seq[:-1] for seq in seqs]
        record = self._forward(inputs, dropout=dropout)
        targets = [t for seq in seqs for t in seq[1:]]
        losses, probs = cross_entropy_forward(record.logits, targets)
        share = 1 / len(targets)  # each token's share of the loss
        return share * sum(losses), inputs, record, probs, targets, share

    def loss(self, batch):
        return self._loss(batch)[0]

    def loss_and_grads(self, batch, dropout=None):
        """The mean loss of a batch, and its gradient with respect to every weight into self.g."""
        cfg, P, has = self.cfg, self.params, self.has
        G = {name: [[0.0] * cols for _ in range(rows)] for name, (_, (rows, cols)) in self.segments.items()}
        loss, inputs, record, probs, targets, dloss = self._loss(batch, dropout)
        masks = record.masks
        bounds = list(accumulate(map(len, inputs), initial=0))  # where each document starts and ends in the N rows
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
                dx = matadd(dbranch, dx) if has.residual else dbranch
            if has.attention:  # attn_residual = x + attn_wo(attention(q, k, v)), q, k, v projections of rmsnorm(x)
                dnorm = self._attention_backward(dx, layer, bounds, G, masks, li)
                dbranch = rmsnorm_backward(dnorm, record.stream(li)) if has.rmsnorm else dnorm
                dx = matadd(dbranch, dx) if has.residual else dbranch
        dx = dropout_backward(rmsnorm_backward(dx, record.embedding) if has.rmsnorm else dx, masks.get((EMBEDDING, 0)))
        positions = [i for seq in inputs for i in range(len(seq))] if has.position else None
        embedding_backward(dx, [t for seq in inputs for t in seq], positions, G["wte"], G["wpe"])
        self.g = list(chain.from_iterable(chain.from_iterable(G.values())))  # (P,) in the reference order
        return loss

    def _attention_backward(self, dx, layer, bounds, G, masks, li):
        """From dx (N, C), the gradient of layer li's attention block's output, the gradients of attn_wo and of q, k
        and v's weights into G, and the gradient (N, C) of what q, k and v read (attn_norm); `bounds`: the documents'
        rows, `masks`: the forward's dropout masks."""
        P, C, L = self.params, self.cfg.n_embd, f"layer{li}."
        dproj = dropout_backward(dx, masks.get((ATTENTION_OUTPUT, li)))
        dheads = linear_backward(dproj, layer.attn_heads, P[L + "attn_wo"], G[L + "attn_wo"])
        dqkv = []  # (N, 3C): dq, dk and dv side by side, as the forward's one product made them
        dropped = masks.get((ATTENTION_WEIGHTS, li), [None] * len(layer.attn_weights))  # per document
        for a, b, weights, document_dropped in zip(bounds, bounds[1:], layer.attn_weights, dropped):
            dq, dk, dv = attention_backward(dheads[a:b], layer.attn_q[a:b], layer.attn_k[a:b], layer.attn_v[a:b],
                                            weights, self.cfg.n_head, self.attn_scale, self.has.causal_mask,
                                            document_dropped)
            dqkv.extend(rq + rk + rv for rq, rk, rv in zip(dq, dk, dv))
        dw_qkv = G[L + "attn_wq"] + G[L + "attn_wk"] + G[L + "attn_wv"]  # (3C, C): the backward renews its rows
        dnorm = linear_backward(dqkv, layer.attn_norm, P[L + "attn_qkv"], dw_qkv)
        G[L + "attn_wq"], G[L + "attn_wk"], G[L + "attn_wv"] = dw_qkv[:C], dw_qkv[C:2 * C], dw_qkv[2 * C:]
        return dnorm

    def clip_grads(self, max_norm):
        norm = math.sqrt(sum(g * g for g in self.g))
        if norm > max_norm:
            self.g = [g * (max_norm / norm) for g in self.g]
        return norm

    def adam_step(self, step, lr_t, beta1=0.85, beta2=0.99, eps=1e-8, weight_decay=0.0):
        adam_update(self.p, self.g, self.m, self.v, step, lr_t, beta1, beta2, eps, weight_decay)
        self.params = self.matrices(self.p)

    def record(self, tokens):
        """The Record of one forward pass over `tokens` (T,), every intermediate as nested lists."""
        record = self._forward([tokens], scores_too=True)  # one document: its attention is the first
        return record._replace(layers=[layer._replace(attn_scores=layer.attn_scores[0],
                                                      attn_weights=layer.attn_weights[0])
                                       if layer.attn_weights is not None else layer for layer in record.layers])


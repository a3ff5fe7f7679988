"""The python engine: the atomic file's model in plain Python, one operation on whole vectors at a time.

Where the atomic file makes a Value for every scalar and lets backward() find the chain rule, this
engine writes each operation as a pair, `*_forward` and `*_backward`, the way llm.c does: the forward
keeps what the backward needs, the backward turns the gradient of an output (`dy`) into the gradients
of its inputs (`dx`) and adds the gradients of its weights (`dw`). The arithmetic is the reference's
(same formulas, same order of operations where it matters), so the numbers agree with the atomic file
to rounding, about 1e-15. Standard library only, Python 3.9 and PyPy.

Shapes, by one-letter names: N = tokens of a batch (all its documents laid end to end), T = tokens of
one document, C = n_embd, H = n_head, D = head_dim = C // H, V = vocab_size. A matrix is a list of rows.
"""
import math
from array import array
from itertools import chain
from operator import add, mul

from microgpt.atomic import param_shapes


def zeros(rows, cols):
    return [[0.0] * cols for _ in range(rows)]


# ----------------------------------------------------------------------------------------------
# The operations, each a forward/backward pair


def embedding_forward(wte, wpe, tokens, positions):  # -> (N, C)
    return [list(map(add, wte[t], wpe[p])) for t, p in zip(tokens, positions)]


def embedding_backward(dx, tokens, positions, shape_wte, shape_wpe):  # dx (N, C) -> dwte, dwpe
    dwte, dwpe = zeros(*shape_wte), zeros(*shape_wpe)
    for row, t, p in zip(dx, tokens, positions):
        dwte[t] = list(map(add, dwte[t], row))
        dwpe[p] = list(map(add, dwpe[p], row))
    return dwte, dwpe


def rmsnorm_forward(x):  # (N, C) -> y (N, C), scale (N,)
    n_inv = len(x[0]) ** -1
    scale = [(sum(map(mul, row, row)) * n_inv + 1e-5) ** -0.5 for row in x]
    return [[xi * s for xi in row] for row, s in zip(x, scale)], scale


def rmsnorm_backward(dy, x, scale):  # dy (N, C) -> dx (N, C)
    # y = x * s with s = (mean(x^2) + eps)^-1/2, so dx = s * dy - (s^3 / C) * (dy . x) * x
    n_inv = len(x[0]) ** -1
    dx = []
    for dy_row, x_row, s in zip(dy, x, scale):
        c = s * s * s * n_inv * sum(map(mul, dy_row, x_row))
        dx.append([s * g - c * xi for g, xi in zip(dy_row, x_row)])
    return dx


def linear_forward(x, w):  # x (N, nin), w (nout, nin) -> (N, nout)
    return [[sum(map(mul, w_row, x_row)) for w_row in w] for x_row in x]


def linear_backward(dy, x, w):  # dy (N, nout) -> dx (N, nin), dw (nout, nin)
    w_cols = list(zip(*w))  # (nin, nout)
    dx = [[sum(map(mul, dy_row, col)) for col in w_cols] for dy_row in dy]
    # dw[i] = sum over tokens t of dy[t][i] * x[t], summed token by token; a zero dy[t][i] (a ReLU
    # that was off) adds nothing, so it is skipped
    dw = [[0.0] * len(x[0]) for _ in w]
    for dy_row, x_row in zip(dy, x):
        for i, g in enumerate(dy_row):
            if g:
                dw[i] = [a + g * b for a, b in zip(dw[i], x_row)]
    return dx, dw


def relu_forward(x):  # (N, n) -> (N, n)
    return [[xi if xi > 0 else 0.0 for xi in row] for row in x]


def relu_backward(dy, x):  # the gradient passes where the input was positive
    return [[g if xi > 0 else 0.0 for g, xi in zip(dy_row, x_row)] for dy_row, x_row in zip(dy, x)]


def matadd(a, b):  # (N, n) + (N, n): a residual connection, or two gradients of one tensor summed
    return [list(map(add, a_row, b_row)) for a_row, b_row in zip(a, b)]


def softmax(z):  # (n,) -> (n,), the reference's arithmetic: exp(z - max) * (sum)^-1
    mx = max(z)
    e = [math.exp(zi - mx) for zi in z]
    inv = sum(e) ** -1
    return [ei * inv for ei in e]


def attention_forward(q, k, v, n_head):
    """Causal self-attention of one sequence. q (Tq, C); k, v (Tk, C) with Tk >= Tq: the queries are
    the last Tq positions (earlier keys and values come from a cache), so query i sees keys
    0 ... Tk - Tq + i. Returns out (Tq, C) and att[h][i], the weights (keys seen,) of head h and
    query i, which the backward needs."""
    D = len(q[0]) // n_head
    scale = (D**0.5) ** -1
    first = len(k) - len(q)  # the position of query 0
    out, att = [[] for _ in q], []
    for h in range(n_head):
        lo, hi = h * D, (h + 1) * D
        k_h = [row[lo:hi] for row in k]  # (Tk, D)
        v_cols = list(zip(*[row[lo:hi] for row in v]))  # (D, Tk)
        att_h = []
        for i, q_row in enumerate(q):
            q_hi = q_row[lo:hi]
            w = softmax([sum(map(mul, q_hi, k_t)) * scale for k_t in k_h[:first + i + 1]])  # (seen,)
            out[i] += [sum(map(mul, w, v_col)) for v_col in v_cols]  # map stops at the keys seen
            att_h.append(w)
        att.append(att_h)
    return out, att


def attention_backward(dout, q, k, v, att, n_head):  # dout (Tq, C) -> dq (Tq, C), dk, dv (Tk, C)
    D = len(q[0]) // n_head
    scale = (D**0.5) ** -1
    Tk = len(k)
    dq, dk, dv = [[] for _ in q], [[] for _ in k], [[] for _ in k]
    for h in range(n_head):
        lo, hi = h * D, (h + 1) * D
        q_h, g_h = [row[lo:hi] for row in q], [row[lo:hi] for row in dout]  # (Tq, D)
        k_h, v_h = [row[lo:hi] for row in k], [row[lo:hi] for row in v]  # (Tk, D)
        k_cols = list(zip(*k_h))  # (D, Tk)
        da_h = []  # (Tq, keys seen): the gradient of each attention logit, before the scale
        for g, w in zip(g_h, att[h]):
            dw = [sum(map(mul, g, v_t)) for v_t in v_h[:len(w)]]  # d(loss)/d(weight of key t)
            centre = sum(map(mul, w, dw))  # softmax backward: da_t = w_t * (dw_t - sum_s w_s dw_s)
            da_h.append([w_t * (dw_t - centre) * scale for w_t, dw_t in zip(w, dw)])
        for i, da in enumerate(da_h):
            dq[i] += [sum(map(mul, da, k_col)) for k_col in k_cols]
        # dv[t] = sum_i w_i[t] g_i and dk[t] = sum_i da_i[t] q_i: the keys' columns of att and da,
        # with zeros where query i does not see key t
        w_cols = list(zip(*[w + [0.0] * (Tk - len(w)) for w in att[h]]))  # (Tk, Tq)
        da_cols = list(zip(*[da + [0.0] * (Tk - len(da)) for da in da_h]))
        g_cols, q_cols = list(zip(*g_h)), list(zip(*q_h))  # (D, Tq)
        for t in range(Tk):
            dv[t] += [sum(map(mul, w_cols[t], g_col)) for g_col in g_cols]
            dk[t] += [sum(map(mul, da_cols[t], q_col)) for q_col in q_cols]
    return dq, dk, dv


def cross_entropy_forward(logits, targets):  # logits (N, V), targets (N,) -> losses (N,), probs (N, V)
    probs = [softmax(row) for row in logits]
    return [-math.log(p[t]) for p, t in zip(probs, targets)], probs


def cross_entropy_backward(probs, targets, dloss):  # d(loss)/d(logits) = dloss * (probs - one_hot)
    dlogits = []
    for p, t in zip(probs, targets):
        row = [dloss * pi for pi in p]
        row[t] = dloss * (p[t] - 1.0)
        dlogits.append(row)
    return dlogits


def adam_update(p, g, m, v, step, lr_t, beta1, beta2, eps):
    """Adam on every parameter, in place on flat lists (P,): the reference's expressions in the
    reference's order (m, v: running means of g and g^2; bias1, bias2 undo their zero start)."""
    c1, c2 = 1 - beta1, 1 - beta2
    bias1, bias2 = 1 - beta1 ** (step + 1), 1 - beta2 ** (step + 1)
    for i, gi in enumerate(g):
        m[i] = mi = beta1 * m[i] + c1 * gi
        v[i] = vi = beta2 * v[i] + c2 * gi**2
        p[i] -= lr_t * (mi / bias1) / ((vi / bias2) ** 0.5 + eps)


def flatten(mats):  # {name: matrix} -> (P,), in the reference order
    return list(chain.from_iterable(chain.from_iterable(mats.values())))


def split(flat, shapes):  # (P,) -> {name: (rows * cols,)}
    parts, i = {}, 0
    for name, (rows, cols) in shapes.items():
        parts[name], i = flat[i:i + rows * cols], i + rows * cols
    return parts


def unflatten(flat, shapes):  # (P,) -> {name: matrix}
    return {name: [part[r * cols:(r + 1) * cols] for r in range(rows)]
            for (name, part), (rows, cols) in zip(split(flat, shapes).items(), shapes.values())}


# ----------------------------------------------------------------------------------------------
# The model: the operations above in the atomic file's order


class Engine:
    """The model's weights, their gradients and Adam's moments, as {name: matrix} in the reference
    order; forward (with a key/value cache), loss and gradients of a batch, and an Adam step."""

    name = "python"
    dtypes = ("float64",)

    def __init__(self, cfg, weights, dtype="float64"):
        self.cfg, self.shapes = cfg, param_shapes(cfg)
        self.p = [float(x) for name in self.shapes for row in weights[name] for x in row]  # (P,) all weights
        self.params = unflatten(self.p, self.shapes)  # {name: matrix}, rows copied out of self.p
        self.grads = {name: zeros(*shape) for name, shape in self.shapes.items()}
        n_params = sum(rows * cols for rows, cols in self.shapes.values())
        self.m, self.v = [0.0] * n_params, [0.0] * n_params  # Adam's moments, flat (P,)

    def state_dict(self):
        """The weights, as fresh lists of floats."""
        return {name: [list(row) for row in mat] for name, mat in self.params.items()}

    def grad_dict(self):
        """The gradients of the last loss_and_grads, as fresh lists of floats."""
        return {name: [list(row) for row in mat] for name, mat in self.grads.items()}

    def new_cache(self):
        """An empty key/value cache: per layer, the key rows and value rows of the positions fed."""
        return [([], []) for _ in range(self.cfg.n_layer)]

    def forward(self, tokens, cache):
        """Logits (T, V) of the tokens that follow each of `tokens`, which sit at the positions after
        those already in `cache`; their keys and values are appended to it."""
        return self._forward([tokens], [cache])[0]

    def _forward(self, seqs, caches, tape=None):
        """The forward pass of several sequences at once, their tokens laid end to end (N rows); each
        attends only within itself, through its own cache. Records into `tape` what backward needs."""
        cfg, P = self.cfg, self.params
        tokens = [t for seq in seqs for t in seq]
        positions = [len(cache[0][0]) + i for seq, cache in zip(seqs, caches) for i in range(len(seq))]
        bounds = [0]
        for seq in seqs:
            bounds.append(bounds[-1] + len(seq))
        x0 = embedding_forward(P["wte"], P["wpe"], tokens, positions)  # (N, C)
        x, s0 = rmsnorm_forward(x0)
        layers = []
        for li in range(cfg.n_layer):
            L = f"layer{li}."
            xn, s1 = rmsnorm_forward(x)
            q = linear_forward(xn, P[L + "attn_wq"])  # (N, C) each
            k = linear_forward(xn, P[L + "attn_wk"])
            v = linear_forward(xn, P[L + "attn_wv"])
            out, atts = [], []
            for a, b, cache in zip(bounds, bounds[1:], caches):
                keys, values = cache[li]
                keys.extend(k[a:b])
                values.extend(v[a:b])
                out_seq, att = attention_forward(q[a:b], keys, values, cfg.n_head)
                out.extend(out_seq)
                atts.append(att)
            x_mid = matadd(linear_forward(out, P[L + "attn_wo"]), x)  # (N, C)
            xn2, s2 = rmsnorm_forward(x_mid)
            h = linear_forward(xn2, P[L + "mlp_fc1"])  # (N, 4C)
            act = relu_forward(h)
            x_out = matadd(linear_forward(act, P[L + "mlp_fc2"]), x_mid)  # (N, C)
            layers.append((x, xn, s1, q, k, v, out, atts, x_mid, xn2, s2, h, act))
            x = x_out
        logits = linear_forward(x, P["lm_head"])  # (N, V)
        if tape is not None:
            tape.update(tokens=tokens, positions=positions, bounds=bounds, x0=x0, s0=s0, layers=layers, x=x)
        return [logits[a:b] for a, b in zip(bounds, bounds[1:])]

    def _loss(self, batch, tape=None):
        """The mean loss over every predicted token of a batch of documents (lists of token ids, each
        cut to block_size + 1 tokens); also the probabilities and targets, which backward needs."""
        seqs = [doc[:self.cfg.block_size + 1] for doc in batch]
        logits = self._forward([seq[:-1] for seq in seqs], [self.new_cache() for _ in seqs], tape)
        targets = [t for seq in seqs for t in seq[1:]]
        losses, probs = cross_entropy_forward([row for rows in logits for row in rows], targets)
        return (1 / len(targets)) * sum(losses), probs, targets

    def loss(self, batch):
        """The mean loss of a batch, without gradients (evaluation)."""
        return self._loss(batch)[0]

    def loss_and_grads(self, batch):
        """The mean loss of a batch, and its gradient with respect to every weight into self.grads."""
        cfg, P, tape = self.cfg, self.params, {}
        loss, probs, targets = self._loss(batch, tape)
        dloss = 1 / len(targets)

        G = {}  # the gradients, filled from the loss back to the embeddings
        dlogits = cross_entropy_backward(probs, targets, dloss)
        dx, G["lm_head"] = linear_backward(dlogits, tape["x"], P["lm_head"])
        bounds = tape["bounds"]
        for li in reversed(range(cfg.n_layer)):
            L = f"layer{li}."
            x, xn, s1, q, k, v, out, atts, x_mid, xn2, s2, h, act = tape["layers"][li]
            # x_out = x_mid + mlp(rmsnorm(x_mid)): dx flows into both branches
            dact, G[L + "mlp_fc2"] = linear_backward(dx, act, P[L + "mlp_fc2"])
            dxn2, G[L + "mlp_fc1"] = linear_backward(relu_backward(dact, h), xn2, P[L + "mlp_fc1"])
            dx = matadd(rmsnorm_backward(dxn2, x_mid, s2), dx)
            # x_mid = x + attn_wo(attention(q, k, v)), where q, k, v are projections of rmsnorm(x)
            dout, G[L + "attn_wo"] = linear_backward(dx, out, P[L + "attn_wo"])
            dq, dk, dv = [], [], []
            for a, b, att in zip(bounds, bounds[1:], atts):
                dq_seq, dk_seq, dv_seq = attention_backward(dout[a:b], q[a:b], k[a:b], v[a:b], att,
                                                            cfg.n_head)
                dq.extend(dq_seq)
                dk.extend(dk_seq)
                dv.extend(dv_seq)
            # q, k and v all read xn, so one product with the three matrices stacked, (N, 3C) x (3C, C),
            # both sums their gradients into dxn and gives the three weight gradients
            C = cfg.n_embd
            w_qkv = P[L + "attn_wq"] + P[L + "attn_wk"] + P[L + "attn_wv"]  # (3C, C)
            dxn, dw_qkv = linear_backward([a + b + c for a, b, c in zip(dq, dk, dv)], xn, w_qkv)
            G[L + "attn_wq"], G[L + "attn_wk"], G[L + "attn_wv"] = dw_qkv[:C], dw_qkv[C:2 * C], dw_qkv[2 * C:]
            dx = matadd(rmsnorm_backward(dxn, x, s1), dx)
        dx0 = rmsnorm_backward(dx, tape["x0"], tape["s0"])
        G["wte"], G["wpe"] = embedding_backward(dx0, tape["tokens"], tape["positions"],
                                                 self.shapes["wte"], self.shapes["wpe"])
        self.grads = {name: G[name] for name in self.shapes}  # in the reference order
        return loss

    def clip_grads(self, max_norm):
        """Scale the gradients down to a global L2 norm of max_norm if above it; return the norm before."""
        norm = math.sqrt(sum(g * g for mat in self.grads.values() for row in mat for g in row))
        if norm > max_norm:
            scale = max_norm / norm
            self.grads = {name: [[g * scale for g in row] for row in mat] for name, mat in self.grads.items()}
        return norm

    def adam_step(self, step, lr_t, beta1=0.85, beta2=0.99, eps=1e-8, weight_decay=0.0):
        """One Adam update from self.grads (step counts from 0) at learning rate lr_t; weight_decay
        shrinks every weight by lr_t * weight_decay first (AdamW's decoupled decay)."""
        if weight_decay:
            self.p = [pi - lr_t * weight_decay * pi for pi in self.p]
        adam_update(self.p, flatten(self.grads), self.m, self.v, step, lr_t, beta1, beta2, eps)
        self.params = unflatten(self.p, self.shapes)

    def export_state(self):
        """Weights and Adam's moments as {name: flat array of floats}: 'wte', ..., 'adam.m.wte', ..."""
        state = {}
        for prefix, flat in (("", self.p), ("adam.m.", self.m), ("adam.v.", self.v)):
            state.update({prefix + name: array("d", part) for name, part in split(flat, self.shapes).items()})
        return state

    def load_state(self, state):
        """Take weights and Adam's moments from export_state()'s layout (any flat float sequences)."""
        self.p, self.m, self.v = ([float(x) for name in self.shapes for x in state[prefix + name]]
                                  for prefix in ("", "adam.m.", "adam.v."))
        self.params = unflatten(self.p, self.shapes)

    def trace(self, tokens):
        """Every intermediate of one forward pass over `tokens` (T,), under the names every engine uses
        (microgpt/trace.py lists them), as lists of floats: rows are positions."""
        cfg, P, tape = self.cfg, self.params, {}
        logits = self._forward([tokens], [self.new_cache()], tape)[0]
        T, H, D = len(tokens), cfg.n_head, cfg.n_embd // cfg.n_head
        record = {"embedding": tape["x0"]}
        for li, (x, xn, _s1, q, k, v, out, atts, x_mid, xn2, _s2, h, act) in enumerate(tape["layers"]):
            L = f"layer{li}."
            if li == 0:
                record["embedding.norm"] = x
            scores = [[[sum(map(mul, q[i][hd * D:(hd + 1) * D], k[t][hd * D:(hd + 1) * D])) * (D**0.5) ** -1
                        if t <= i else None for t in range(T)] for i in range(T)] for hd in range(H)]
            weights = [[w + [0.0] * (T - len(w)) for w in att_h] for att_h in atts[0]]  # (H, T, T)
            record.update({L + "attn.norm": xn, L + "attn.q": q, L + "attn.k": k, L + "attn.v": v,
                           L + "attn.scores": scores, L + "attn.weights": weights, L + "attn.heads": out,
                           L + "attn.proj": linear_forward(out, P[L + "attn_wo"]), L + "attn.residual": x_mid,
                           L + "mlp.norm": xn2, L + "mlp.fc1": h, L + "mlp.relu": act,
                           L + "mlp.fc2": linear_forward(act, P[L + "mlp_fc2"])})
            record[L + "mlp.residual"] = tape["layers"][li + 1][0] if li + 1 < cfg.n_layer else tape["x"]
        record["logits"] = logits
        record["probs"] = [softmax(row) for row in logits]
        return record

"""The numpy engine: the python engine's operations, pair for pair and name for name, on float64 arrays.

Each `*_forward` / `*_backward` pair here computes what the pair of the same name in
microgpt/engines/python.py computes, with whole arrays instead of loops: lay the two files side by side.
Documents of a batch are padded to one length T and the loss ignores the padding; attention is causal,
so real tokens never see the padding and it receives no gradient. All weights live in one flat array
(and so do their gradients and Adam's moments): a matrix is a view into it, and Adam is a few whole-array
operations. float64 by default, so the numbers agree with the atomic file to rounding (float32 on request).

Shapes: B = documents in the batch, T = tokens per document (padded), C = n_embd, H = n_head,
D = head_dim = C // H, V = vocab_size, P = number of parameters.
"""
import numpy as np

from microgpt.atomic import param_shapes


def embedding_forward(wte, wpe, tokens, positions):  # tokens (B, T), positions (T,) -> (B, T, C)
    return wte[tokens] + wpe[positions]


def embedding_backward(dx, tokens, positions, dwte, dwpe):  # dx (B, T, C) -> into dwte, dwpe
    dwte[:] = 0.0
    np.add.at(dwte, tokens, dx)  # a token that occurs twice gets both gradients
    dwpe[:] = 0.0
    dwpe[positions] = dx.sum(axis=0)


def rmsnorm_forward(x):  # (B, T, C) -> y (B, T, C), scale (B, T, 1)
    scale = ((x * x).sum(axis=-1, keepdims=True) * x.shape[-1] ** -1 + 1e-5) ** -0.5
    return x * scale, scale


def rmsnorm_backward(dy, x, scale):  # dx = s * dy - (s^3 / C) * (dy . x) * x
    return scale * dy - (scale**3 * x.shape[-1] ** -1) * (dy * x).sum(axis=-1, keepdims=True) * x


def linear_forward(x, w):  # x (B, T, nin), w (nout, nin) -> (B, T, nout)
    return x @ w.T


def linear_backward(dy, x, w, dw):  # dy (B, T, nout) -> dx (B, T, nin); dy^T x written into dw
    np.matmul(dy.reshape(-1, dy.shape[-1]).T, x.reshape(-1, x.shape[-1]), out=dw)
    return dy @ w


def relu_forward(x):
    return np.maximum(x, 0.0)


def relu_backward(dy, x):  # the gradient passes where the input was positive
    return dy * (x > 0)


def softmax(z):  # along the last axis, the reference's arithmetic: exp(z - max) * (sum)^-1
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e * e.sum(axis=-1, keepdims=True) ** -1


def split_heads(x, n_head):  # (B, T, C) -> (B, H, T, D)
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):  # (B, H, T, D) -> (B, T, C)
    B, H, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * D)


def attention_forward(q, k, v, n_head):
    """Causal self-attention. q (B, Tq, C); k, v (B, Tk, C) with Tk >= Tq: the queries are the last Tq
    positions, so query i sees keys 0 ... Tk - Tq + i. Returns out (B, Tq, C), att (B, H, Tq, Tk)."""
    Tq, Tk = q.shape[1], k.shape[1]
    scale = ((q.shape[-1] // n_head) ** 0.5) ** -1
    scores = split_heads(q, n_head) @ split_heads(k, n_head).transpose(0, 1, 3, 2) * scale  # (B, H, Tq, Tk)
    scores[..., np.triu(np.ones((Tq, Tk), dtype=bool), k=Tk - Tq + 1)] = -np.inf  # the future: weight 0
    att = softmax(scores)
    return merge_heads(att @ split_heads(v, n_head)), att


def attention_backward(dout, q, k, v, att, n_head):  # dout (B, Tq, C) -> dq (B, Tq, C), dk, dv (B, Tk, C)
    scale = ((q.shape[-1] // n_head) ** 0.5) ** -1
    q_h, k_h, v_h, g_h = (split_heads(a, n_head) for a in (q, k, v, dout))
    datt = g_h @ v_h.transpose(0, 1, 3, 2)  # (B, H, Tq, Tk): d(loss)/d(weight of key t)
    dv = att.transpose(0, 1, 3, 2) @ g_h
    dscores = att * (datt - (att * datt).sum(axis=-1, keepdims=True)) * scale  # softmax backward
    dq, dk = dscores @ k_h, dscores.transpose(0, 1, 3, 2) @ q_h
    return merge_heads(dq), merge_heads(dk), merge_heads(dv)


def cross_entropy_forward(logits, targets):  # logits (B, T, V), targets (B, T) -> losses (B, T), probs
    probs = softmax(logits)
    return -np.log(np.take_along_axis(probs, targets[..., None], axis=-1)[..., 0]), probs


def cross_entropy_backward(probs, targets, dloss):  # dloss (B, T): 1/N where a token counts, 0 on padding
    dlogits = probs.copy()  # dlogits = probs - one_hot(target), scaled by dloss
    index = targets[..., None]
    np.put_along_axis(dlogits, index, np.take_along_axis(probs, index, axis=-1) - 1.0, axis=-1)
    return dlogits * dloss[..., None]


def adam_update(p, g, m, v, step, lr_t, beta1, beta2, eps):
    """Adam on every parameter at once, in place on flat arrays (P,), in the reference's order."""
    bias1, bias2 = 1 - beta1 ** (step + 1), 1 - beta2 ** (step + 1)
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * g**2
    p -= lr_t * (m / bias1) / ((v / bias2) ** 0.5 + eps)


class Engine:
    """The model's weights, gradients and Adam's moments as flat arrays (float64 unless asked for
    float32, which is about twice as fast and agrees to ~1e-6) with a view per matrix;
    forward (with a key/value cache), loss and gradients of a batch, and an Adam step."""

    name = "numpy"
    dtypes = ("float64", "float32")

    def __init__(self, cfg, weights, dtype="float64"):
        self.cfg, self.shapes, self.dtype = cfg, param_shapes(cfg), np.dtype(dtype)
        self.p = np.concatenate([np.asarray(weights[name], dtype=self.dtype).ravel() for name in self.shapes])
        self.g, self.m, self.v = np.zeros_like(self.p), np.zeros_like(self.p), np.zeros_like(self.p)
        self.offsets, start = {}, 0  # where each matrix starts in the flat arrays
        for name, (rows, cols) in self.shapes.items():
            self.offsets[name], start = start, start + rows * cols
        self.params = {name: self._view(self.p, name, *shape) for name, shape in self.shapes.items()}
        self.grads = {name: self._view(self.g, name, *shape) for name, shape in self.shapes.items()}
        # q, k and v of a layer are consecutive in the reference order: one (3C, C) matrix, one product
        C = cfg.n_embd
        self.qkv = [self._view(self.p, f"layer{i}.attn_wq", 3 * C, C) for i in range(cfg.n_layer)]
        self.dqkv = [self._view(self.g, f"layer{i}.attn_wq", 3 * C, C) for i in range(cfg.n_layer)]

    def _view(self, flat, name, rows, cols):  # (rows, cols) of `flat`, from where matrix `name` starts
        start = self.offsets[name]
        return flat[start:start + rows * cols].reshape(rows, cols)

    def state_dict(self):
        """The weights, as nested lists of floats."""
        return {name: w.tolist() for name, w in self.params.items()}

    def grad_dict(self):
        return {name: g.tolist() for name, g in self.grads.items()}

    def new_cache(self):
        """An empty key/value cache: per layer, the keys and values (1, T, C) of the positions fed."""
        empty = np.zeros((1, 0, self.cfg.n_embd), dtype=self.dtype)
        return [[empty, empty] for _ in range(self.cfg.n_layer)]

    def forward(self, tokens, cache):
        """Logits (T, V) of the tokens that follow each of `tokens`, which sit at the positions after
        those already in `cache`; their keys and values are appended to it."""
        start = cache[0][0].shape[1]
        positions = np.arange(start, start + len(tokens))
        return self._forward(np.array([tokens]), positions, cache)[0].tolist()

    def _forward(self, tokens, positions, cache=None, tape=None):
        """Logits (B, T, V) of a batch of token rows (B, T); `cache` (for B = 1) holds earlier keys and
        values. Records into `tape` what backward needs."""
        cfg, P = self.cfg, self.params
        C = cfg.n_embd
        x0 = embedding_forward(P["wte"], P["wpe"], tokens, positions)  # (B, T, C)
        x, s0 = rmsnorm_forward(x0)
        layers = []
        for li in range(cfg.n_layer):
            L = f"layer{li}."
            xn, s1 = rmsnorm_forward(x)
            qkv = linear_forward(xn, self.qkv[li])  # (B, T, 3C): q, k and v side by side
            q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
            if cache is not None:
                k = cache[li][0] = np.concatenate([cache[li][0], k], axis=1)
                v = cache[li][1] = np.concatenate([cache[li][1], v], axis=1)
            out, att = attention_forward(q, k, v, cfg.n_head)
            x_mid = linear_forward(out, P[L + "attn_wo"]) + x
            xn2, s2 = rmsnorm_forward(x_mid)
            h = linear_forward(xn2, P[L + "mlp_fc1"])  # (B, T, 4C)
            act = relu_forward(h)
            x_out = linear_forward(act, P[L + "mlp_fc2"]) + x_mid
            layers.append((x, xn, s1, q, k, v, out, att, x_mid, xn2, s2, h, act))
            x = x_out
        if tape is not None:
            tape.update(x0=x0, s0=s0, layers=layers, x=x)
        return linear_forward(x, P["lm_head"])  # (B, T, V)

    def _loss(self, batch, tape=None):
        """The mean loss over every predicted token of a batch of documents (lists of token ids, each
        cut to block_size + 1 tokens, padded to the longest); also what backward needs."""
        seqs = [doc[:self.cfg.block_size + 1] for doc in batch]
        T = max(len(seq) for seq in seqs) - 1
        padded = np.zeros((len(seqs), T + 1), dtype=np.int64)
        counts = np.zeros((len(seqs), T), dtype=self.dtype)  # 1 where a token is predicted, 0 on padding
        for b, seq in enumerate(seqs):
            padded[b, :len(seq)] = seq
            counts[b, :len(seq) - 1] = 1.0
        tokens, targets, positions = padded[:, :-1], padded[:, 1:], np.arange(T)
        logits = self._forward(tokens, positions, tape=tape)
        losses, probs = cross_entropy_forward(logits, targets)
        loss = float((losses * counts).sum() * (1 / counts.sum()))
        return loss, probs, tokens, targets, positions, counts * (1 / counts.sum())

    def loss(self, batch):
        """The mean loss of a batch, without gradients (evaluation)."""
        with np.errstate(all="ignore"):  # a diverged model gives inf or nan, which the trainer reports
            return self._loss(batch)[0]

    def loss_and_grads(self, batch):
        """The mean loss of a batch, and its gradient with respect to every weight into self.grads."""
        with np.errstate(all="ignore"):  # a diverged model gives inf or nan, which the trainer reports
            return self._loss_and_grads(batch)

    def _loss_and_grads(self, batch):
        cfg, P, G, tape = self.cfg, self.params, self.grads, {}
        loss, probs, tokens, targets, positions, dloss = self._loss(batch, tape)

        dlogits = cross_entropy_backward(probs, targets, dloss)
        dx = linear_backward(dlogits, tape["x"], P["lm_head"], G["lm_head"])
        for li in reversed(range(cfg.n_layer)):
            L = f"layer{li}."
            x, xn, s1, q, k, v, out, att, x_mid, xn2, s2, h, act = tape["layers"][li]
            dact = linear_backward(dx, act, P[L + "mlp_fc2"], G[L + "mlp_fc2"])
            dxn2 = linear_backward(relu_backward(dact, h), xn2, P[L + "mlp_fc1"], G[L + "mlp_fc1"])
            dx = rmsnorm_backward(dxn2, x_mid, s2) + dx
            dout = linear_backward(dx, out, P[L + "attn_wo"], G[L + "attn_wo"])
            dq, dk, dv = attention_backward(dout, q, k, v, att, cfg.n_head)
            dxn = linear_backward(np.concatenate([dq, dk, dv], axis=-1), xn, self.qkv[li], self.dqkv[li])
            dx = rmsnorm_backward(dxn, x, s1) + dx
        dx0 = rmsnorm_backward(dx, tape["x0"], tape["s0"])
        embedding_backward(dx0, tokens, positions, G["wte"], G["wpe"])
        return loss

    def clip_grads(self, max_norm):
        """Scale the gradients down to a global L2 norm of max_norm if above it; return the norm before."""
        norm = float(np.sqrt((self.g * self.g).sum()))
        if norm > max_norm:
            self.g *= max_norm / norm
        return norm

    def adam_step(self, step, lr_t, beta1=0.85, beta2=0.99, eps=1e-8, weight_decay=0.0):
        """One Adam update from self.grads (step counts from 0) at learning rate lr_t; weight_decay
        shrinks every weight by lr_t * weight_decay first (AdamW's decoupled decay)."""
        if weight_decay:
            self.p -= lr_t * weight_decay * self.p
        adam_update(self.p, self.g, self.m, self.v, step, lr_t, beta1, beta2, eps)

    def export_state(self):
        """Weights and Adam's moments as {name: flat array}: 'wte', ..., 'adam.m.wte', ..."""
        state = {}
        for prefix, flat in (("", self.p), ("adam.m.", self.m), ("adam.v.", self.v)):
            state.update({prefix + name: self._view(flat, name, *shape).ravel().copy()
                          for name, shape in self.shapes.items()})
        return state

    def load_state(self, state):
        """Take weights and Adam's moments from export_state()'s layout (any flat float sequences)."""
        for prefix, flat in (("", self.p), ("adam.m.", self.m), ("adam.v.", self.v)):
            flat[:] = np.concatenate([np.asarray(state[prefix + name], dtype=self.dtype)
                                      for name in self.shapes])

    def trace(self, tokens):
        """Every intermediate of one forward pass over `tokens` (T,), under the names every engine uses
        (microgpt/trace.py lists them), as lists of floats: rows are positions."""
        cfg, P, tape = self.cfg, self.params, {}
        logits = self._forward(np.array([tokens]), np.arange(len(tokens)), tape=tape)[0]
        record = {"embedding": tape["x0"][0]}
        for li, (x, xn, _s1, q, k, v, out, att, x_mid, xn2, _s2, h, act) in enumerate(tape["layers"]):
            L = f"layer{li}."
            if li == 0:
                record["embedding.norm"] = x[0]
            D = cfg.n_embd // cfg.n_head
            scores = (split_heads(q, cfg.n_head) @ split_heads(k, cfg.n_head).transpose(0, 1, 3, 2) * (D**0.5) ** -1)[0]
            record.update({L + "attn.norm": xn[0], L + "attn.q": q[0], L + "attn.k": k[0], L + "attn.v": v[0],
                           L + "attn.scores": scores, L + "attn.weights": att[0], L + "attn.heads": out[0],
                           L + "attn.proj": linear_forward(out, P[L + "attn_wo"])[0], L + "attn.residual": x_mid[0],
                           L + "mlp.norm": xn2[0], L + "mlp.fc1": h[0], L + "mlp.relu": act[0],
                           L + "mlp.fc2": linear_forward(act, P[L + "mlp_fc2"])[0]})
            record[L + "mlp.residual"] = (tape["layers"][li + 1][0] if li + 1 < cfg.n_layer else tape["x"])[0]
        record["logits"], record["probs"] = logits, softmax(logits)
        return {name: value.tolist() for name, value in record.items()}  # scores above the diagonal: unused

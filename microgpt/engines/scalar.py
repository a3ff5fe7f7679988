"""The scalar engine: the atomic file itself behind the engine interface. Every number is a Value in a graph, so
it is the slowest engine and the reference that every other one is checked against. The atomic file has no hooks
to record a forward pass (its 250 lines have no room for them), so this engine cannot trace: its training health
has the per-tensor numbers only."""
import math

from microgpt import atomic
from microgpt.engines.base import Engine as Base
from microgpt.layout import split


class Engine(Base):
    name = "scalar"
    dtypes = ("float64",)
    eval_batch = 1  # a document's graph takes ~0.2 s: a signal waits at most that long in an evaluation

    def __init__(self, cfg, weights, dtype="float64", ablations=()):  # (engines.create refuses ablations here)
        super().__init__(cfg, dtype, ablations)
        self.params = atomic.to_values({name: [[float(x) for x in part[r * cols:(r + 1) * cols]] for r in range(rows)]
                                        for name, ((rows, cols), part) in split(weights, cfg).items()})
        self.values = [p for mat in self.params.values() for row in mat for p in row]  # (P,) reference order
        self.m, self.v = [0.0] * len(self.values), [0.0] * len(self.values)

    @property
    def p(self):  # (P,) the weights, as floats
        return [value.data for value in self.values]

    @property
    def g(self):  # (P,) their gradients
        return [float(value.grad) for value in self.values]

    def load_state(self, weights, m, v):
        for value, x in zip(self.values, weights):
            value.data = float(x)
        self.m, self.v = [float(x) for x in m], [float(x) for x in v]

    def kv_cache(self):
        return [[] for _ in range(self.cfg.n_layer)], [[] for _ in range(self.cfg.n_layer)]

    def forward_cached(self, tokens, cache):
        keys, values = cache
        start = len(keys[0])
        return [[logit.data for logit in atomic.gpt(token, start + i, keys, values, self.params, self.cfg)]
                for i, token in enumerate(tokens)]

    def _loss(self, batch):
        # one document: exactly atomic.doc_loss; several: the mean over all their predicted tokens
        losses = [loss for doc in batch for loss in atomic.token_losses(doc, self.params, self.cfg)]
        return (1 / len(losses)) * sum(losses)

    def loss(self, batch):
        return self._loss(batch).data

    def loss_and_grads(self, batch, dropout=None):
        if dropout is not None:  # (train refuses --dropout with this engine before it starts)
            raise ValueError("the scalar engine is the atomic file, which has no dropout")
        for value in self.values:
            value.grad = 0
        loss = self._loss(batch)
        loss.backward()
        return loss.data

    def clip_grads(self, max_norm):
        norm = math.sqrt(sum(value.grad * value.grad for value in self.values))
        if norm > max_norm:
            for value in self.values:
                value.grad *= max_norm / norm
        return norm

    def adam_step(self, step, lr_t, beta1=0.85, beta2=0.99, eps=1e-8, weight_decay=0.0):
        if weight_decay:  # AdamW's decoupled decay, before the Adam update
            for value in self.values:
                value.data -= lr_t * weight_decay * value.data
        atomic.adam_step(self.values, self.m, self.v, step, lr_t, beta1, beta2, eps)

    def _layer_health(self, tokens):
        return {"layers": None, "non_finite": None, "collapsed": []}

    def first_non_finite(self, tokens):
        return None

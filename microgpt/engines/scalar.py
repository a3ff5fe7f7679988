"""The scalar engine: the atomic file itself behind the engine interface. Every number is a Value in a
graph, so it is the slowest engine and the reference that every other one is checked against."""
import math
from array import array

from microgpt import atomic


class Engine:
    name = "scalar"
    dtypes = ("float64",)

    def __init__(self, cfg, weights, dtype="float64"):
        self.cfg = cfg
        self.params = atomic.to_values({name: weights[name] for name in atomic.param_shapes(cfg)})
        self.flat = [p for mat in self.params.values() for row in mat for p in row]  # (P,) reference order
        self.m, self.v = [0.0] * len(self.flat), [0.0] * len(self.flat)

    def state_dict(self):
        return {name: [[p.data for p in row] for row in mat] for name, mat in self.params.items()}

    def grad_dict(self):
        return {name: [[float(p.grad) for p in row] for row in mat] for name, mat in self.params.items()}

    def new_cache(self):
        return [[] for _ in range(self.cfg.n_layer)], [[] for _ in range(self.cfg.n_layer)]

    def forward(self, tokens, cache):
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

    def loss_and_grads(self, batch):
        for p in self.flat:
            p.grad = 0
        loss = self._loss(batch)
        loss.backward()
        return loss.data

    def clip_grads(self, max_norm):
        norm = math.sqrt(sum(p.grad * p.grad for p in self.flat))
        if norm > max_norm:
            for p in self.flat:
                p.grad *= max_norm / norm
        return norm

    def adam_step(self, step, lr_t, beta1=0.85, beta2=0.99, eps=1e-8, weight_decay=0.0):
        if weight_decay:  # AdamW's decoupled decay, before the Adam update
            for p in self.flat:
                p.data -= lr_t * weight_decay * p.data
        atomic.adam_step(self.flat, self.m, self.v, step, lr_t, beta1, beta2, eps)

    def export_state(self):
        state, i = {}, 0
        for name, mat in self.params.items():
            n = len(mat) * len(mat[0])
            state[name] = array("d", (p.data for row in mat for p in row))
            state["adam.m." + name] = array("d", self.m[i:i + n])
            state["adam.v." + name] = array("d", self.v[i:i + n])
            i += n
        return state

    def load_state(self, state):
        weights = [x for name in self.params for x in state[name]]
        for p, x in zip(self.flat, weights):
            p.data = float(x)
        self.m = [float(x) for name in self.params for x in state["adam.m." + name]]
        self.v = [float(x) for name in self.params for x in state["adam.v." + name]]

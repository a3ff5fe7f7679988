"""The scalar engine: the atomic file itself behind the engine interface. Every number is a Value in a
graph, so it is the slowest engine and the reference that every other one is checked against."""
from microgpt import atomic


class Engine:
    name = "scalar"

    def __init__(self, cfg, weights):
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

    def loss_and_grads(self, batch):
        for p in self.flat:
            p.grad = 0
        # one document: exactly atomic.doc_loss; several: the mean over all their predicted tokens
        losses = [loss for doc in batch for loss in atomic.token_losses(doc, self.params, self.cfg)]
        loss = (1 / len(losses)) * sum(losses)
        loss.backward()
        return loss.data

    def adam_step(self, step, lr_t, beta1=0.85, beta2=0.99, eps=1e-8):
        atomic.adam_step(self.flat, self.m, self.v, step, lr_t, beta1, beta2, eps)

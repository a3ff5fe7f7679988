"""The engine interface: everything the trainer, the sampler and the instruments may ask of an engine, declared once.

An engine holds one model (its weights, their gradients, Adam's two moments) and computes the reference's
numbers with it, at its own speed; every engine subclasses Engine below, and nothing outside microgpt/engines/ asks
an engine what it has. What it offers:

  construction  Engine(cfg, weights, dtype="float64", ablations=(), **options) in each engine's file
                    (engines.create makes one): cfg an atomic.GPTConfig, weights a flat array (P,)
                    (initialisation.reference_weights, or a checkpoint's), dtype one of the class's `dtypes`,
                    ablations the pieces taken out of the model (microgpt/ablations.py; the scalar engine has none);
                    options: the torch engine's device, attention, compile. Attributes: name, cfg, dtypes, ablations
  training      loss_and_grads(batch, dropout=None) -> the mean loss over every predicted token of a batch of
                    token lists (each cut to block_size + 1 tokens), filling the gradients; dropout: the step's
                    microgpt/dropout.Dropout, or None (the scalar engine has none); clip_grads(max_norm) -> the
                    gradient's global norm before clipping; adam_step(step, lr_t, beta1, beta2, eps, weight_decay);
                    lazy_results, False unless the caller sets it (train does): an engine that computes on a GPU
                    then returns that loss and that norm as 0-d tensors on the device, which float() reads, waiting
                    for the GPU only then, so that the host queues the next step while the GPU computes this one
  evaluation    loss(batch) -> the same mean loss, no gradients (never with dropout, nor is anything below)
  sampling      new_cache(); forward(tokens, cache) -> the logits (T, V), lists of floats, after the cached tokens
                    (each engine's kv_cache() and forward_cached(); this file runs the whole context again instead
                    where no cache can keep a position's keys: without the causal mask, or without attention)
  state         weights(), gradients(), moments() -> (m, v): flat arrays (P,) laid out as microgpt/layout.py says,
                    whose bytes a checkpoint is written from: NumPy arrays that are the engine's own memory (numpy,
                    torch on the CPU: valid until the next step; copy to keep), or array('d') copies of the lists
                    of the standard-library engines; load_state(weights, m, v)
  insight       record(tokens) -> Record: every intermediate of one forward pass, under the names `trace` prints;
                    flat(value) -> (shape, flat array) of one of them; health_snapshot() before clip_grads, then
                    health(snapshot, tokens) -> the numbers microgpt/health.py describes; first_non_finite(tokens)
                    -> the name of the first intermediate that is NaN or infinite (None if there is none)
  placement     rank, world (this process among those of a torchrun launch), describe(), mfu(tokens_per_second)
                    -> the share of the hardware's peak or None, should_stop(requested) -> what every process does

The defaults here are those of an engine that runs in one process on a CPU, and the health arithmetic of the
standard-library engines, which the array engines replace with their own. Shapes: T positions, C = n_embd,
H = n_head, V = vocab_size, P = parameters.
"""
import math
from array import array
from typing import NamedTuple

from microgpt import health
from microgpt.ablations import pieces
from microgpt.errors import UserError
from microgpt.layout import segments, split


class Layer(NamedTuple):
    """What one transformer block computes, in order; each field's trace name is layer{i}. and the field's name with
    its first _ as a dot (attn_norm -> layer0.attn.norm). The shapes are record()'s, of one sequence; the forward
    pass of a batch keeps its documents as each engine lays them out (numpy: a batch axis in front; python: rows
    end to end, the attention per document) and no attn_scores (None: the backward needs the weights alone). A block
    that is ablated away leaves its fields None (the residual fields then hold the stream that passes by); a piece
    that becomes the identity (rmsnorm, relu) leaves its input there."""
    attn_norm: object  # (T, C) the stream entering the block, rmsnormed: what q, k and v read
    attn_q: object  # (T, C) queries; head h owns columns h*C/H ... (h+1)*C/H, as in keys and values
    attn_k: object  # (T, C) keys
    attn_v: object  # (T, C) values
    attn_scores: object  # (H, T, T) q.k / sqrt(C/H) (attn_scale), row = query, column = key; -inf on the future
    attn_weights: object  # (H, T, T) the softmax of each row: how much each query takes from each key (0: future);
    # in training with dropout, the weights applied are these times the mask (Record.masks)
    attn_heads: object  # (T, C) every head's weighted mix of values, side by side
    attn_proj: object  # (T, C) the heads through attn_wo (and, in training with dropout, the mask)
    attn_residual: object  # (T, C) the stream plus attn_proj
    mlp_norm: object  # (T, C) attn_residual, rmsnormed
    mlp_fc1: object  # (T, 4C)
    mlp_relu: object  # (T, 4C)
    mlp_fc2: object  # (T, C) (and, in training with dropout, the mask)
    mlp_residual: object  # (T, C) attn_residual plus mlp_fc2: the stream leaving the block


class Record(NamedTuple):
    """Every intermediate of a forward pass: what `trace` prints and what a hand-written backward reads."""
    embedding: object  # (T, C) wte[token] + wpe[position] (and, in training with dropout, the mask)
    embedding_norm: object  # (T, C) rmsnormed: the stream entering layer 0
    layers: list  # a Layer per block
    logits: object  # (T, V)
    masks: dict = None  # {(place, layer): mask} of a training step's dropout (microgpt/dropout.py), which the
    # backward applies again; {} without dropout, None in a record() for a trace

    def stream(self, i):
        """The residual stream entering layer i (i = n_layer: the one lm_head reads)."""
        return self.layers[i - 1].mlp_residual if i else self.embedding_norm

    def named(self):
        """(trace name, value) of every intermediate, in the order computed; none of a block that is ablated away."""
        yield "embedding", self.embedding
        yield "embedding.norm", self.embedding_norm
        for i, layer in enumerate(self.layers):
            for field, value in zip(Layer._fields, layer):
                if value is not None:
                    yield f"layer{i}.{field.replace('_', '.', 1)}", value
        yield "logits", self.logits


class Engine:
    name = "base"
    dtypes = ("float64",)  # what it can compute in, float64 first
    eval_batch = 64  # held-out sequences per loss() in an evaluation, which a signal can cut short between them
    rank, world = 0, 1  # this process among the processes of a torchrun launch
    lazy_results = False  # whether loss_and_grads and clip_grads may return their numbers unread (a GPU's)

    def __init__(self, cfg, dtype="float64", ablations=()):
        self.cfg, self.dtype_name, self.ablations = cfg, dtype, tuple(ablations)
        self.has = pieces(ablations)  # which pieces the model has: has.attention, has.rmsnorm, ...
        # what attention multiplies q.k by: 1 / sqrt(head_dim), the reference's arithmetic (1 when ablated)
        self.attn_scale = ((cfg.n_embd // cfg.n_head) ** 0.5) ** -1 if self.has.attn_scale else 1.0
        self.segments = segments(cfg)  # where each weight matrix starts in the flat arrays, and its shape
        # Subclasses hold p (the weights), g (their gradients), m and v (Adam's moments): flat (P,) in their storage

    # -- training, evaluation, sampling: every engine's own --------------------------------------------------------

    def loss_and_grads(self, batch, dropout=None):
        raise NotImplementedError

    def loss(self, batch):
        raise NotImplementedError

    def clip_grads(self, max_norm):
        """Scale the gradients down to a global L2 norm of max_norm if above it; return the norm before."""
        raise NotImplementedError

    def adam_step(self, step, lr_t, beta1=0.85, beta2=0.99, eps=1e-8, weight_decay=0.0):
        """One AdamW update from the gradients (step counts from 0) at learning rate lr_t."""
        raise NotImplementedError

    def new_cache(self):
        return self.kv_cache() if self._cacheable else []

    def forward(self, tokens, cache):
        """The logits (T, V) after each of `tokens`, which follow the tokens fed to `cache` before."""
        if self._cacheable:
            return self.forward_cached(tokens, cache)
        # Without the causal mask every position reads every other, so a position's keys change with each token fed
        # after it and no key/value cache can hold them (and without attention there are no keys to count the
        # positions by): the cache is the tokens so far, and the whole context runs again.
        cache += tokens
        return self.forward_cached(cache, self.kv_cache())[-len(tokens):]

    @property
    def _cacheable(self):  # whether a position's keys and values stay what they were when computed (a cache keeps them)
        return self.has.attention and self.has.causal_mask

    def kv_cache(self):
        """An empty key/value cache, in the engine's own layout."""
        raise NotImplementedError

    def forward_cached(self, tokens, cache):
        """The logits (T, V) after each of `tokens`, which follow the positions in `cache` and are appended to it."""
        raise NotImplementedError

    def load_state(self, weights, m, v):
        raise NotImplementedError

    def record(self, tokens):
        raise UserError(f"the {self.name} engine cannot trace a forward pass; use --engine python, numpy or torch "
                        "(they compute the same numbers)")

    # -- state: flat arrays in the engine's storage ------------------------------------------------------------------

    def weights(self):
        return self._export(self.p)

    def gradients(self):
        return self._export(self.g)

    def moments(self):
        return self._export(self.m), self._export(self.v)

    def _export(self, flat):
        return array("d", flat)

    # -- placement -----------------------------------------------------------------------------------------------

    def describe(self):
        """Where and how it computes, for the run's header: 'float64'."""
        return self.dtype_name

    def mfu(self, tokens_per_second):
        """Model FLOPs utilisation: the share of the hardware's peak that training achieves; None where unknown."""
        return None

    def should_stop(self, requested):
        """Whether to stop before the next step, decided by every process together (here, one)."""
        return requested

    # -- training health: the numbers, computed here in the engine's own arithmetic ------------------------------------

    def health_snapshot(self):
        """Before clip_grads and adam_step: the gradient norm of each weight tensor, and a copy of the weights."""
        return self._norms(self.g), self._copy(self.p)

    def health(self, snapshot, tokens):
        """The health of the step just taken (microgpt/health.py says what each number means): per tensor, per layer
        (from a forward pass over `tokens`), the first non-finite intermediate and the collapsed heads."""
        grad_norms, before = snapshot
        weight_norms, update_norms = self._norms(before), self._norms(self._minus(self.p, before))
        tensors = {name: {"grad_norm": g, "update_ratio": u / (w or 1.0), "weight_rms": w / math.sqrt(rows * cols)}
                   for (name, (_, (rows, cols))), g, u, w in zip(self.segments.items(), grad_norms, update_norms,
                                                                 weight_norms)}
        return {"grad_norm": math.sqrt(sum(g * g for g in grad_norms)), "tensors": tensors,
                **self._layer_health(tokens)}

    def _layer_health(self, tokens):
        record = self.record(tokens)
        has_relu = self.has.mlp and self.has.relu  # (without one there are no dead ReLUs to count: None)
        return {"layers": [{"activation_rms": self._rms(layer.mlp_residual),
                            "dead_relu": self._dead(layer.mlp_relu) if has_relu else None}
                           for layer in record.layers],
                "non_finite": self._first_non_finite(record),
                "collapsed": [(i, h) for i, layer in enumerate(record.layers) if layer.attn_weights is not None
                              for h in self._collapsed(layer.attn_weights)]}

    def first_non_finite(self, tokens):
        """The name of the first intermediate of a forward pass over `tokens` that holds a NaN or an infinity."""
        return self._first_non_finite(self.record(tokens))

    def _first_non_finite(self, record):
        for name, value in record.named():
            if not self._finite(value, masked=name.endswith("attn.scores")):  # -inf marks the hidden keys there
                return name
        return None

    # The arithmetic of the numbers above, in plain Python on flat lists and nested lists; array engines override it.

    def _norms(self, flat):  # (P,) -> the L2 norm of each weight tensor's part
        return [math.sqrt(sum(x * x for x in part)) for _, part in split(flat, self.cfg).values()]

    def _copy(self, flat):
        return list(flat)

    def _minus(self, a, b):
        return [x - y for x, y in zip(a, b)]

    def _rms(self, x):
        values = list(flatten(x))
        return math.sqrt(sum(v * v for v in values) / len(values))

    def _dead(self, relu):  # (T, 4C) -> the fraction of units that are off at every position
        return sum(1 for unit in zip(*relu) if not any(unit)) / len(relu[0])

    def _collapsed(self, weights):  # (H, T, T) -> the heads whose every query that sees 2+ keys puts it all on one
        return [h for h, rows in enumerate(weights)
                if len(rows) > 1 and all(max(row) >= health.COLLAPSED for row in rows[1:])]

    def _finite(self, x, masked=False):
        return all(math.isfinite(v) or (masked and v == -math.inf) for v in flatten(x))

    def flat(self, x):
        """(shape, flat array) of one recorded intermediate: how a Record's values leave the engine."""
        shape, inner = [], x
        while isinstance(inner, list):
            shape.append(len(inner))
            inner = inner[0] if inner else None
        return tuple(shape), array("d", flatten(x))


def in_chunks(*flats, size=1 << 16):
    """Flat arrays (P,) side by side, a slice of `size` at a time. Whole-array arithmetic makes a temporary per
    operation; one of 2**16 numbers the allocator hands back at once, where one of a whole array (10M parameters:
    40 MB) is fresh memory that the operating system gives out page by page: Adam on 10.7M float32 parameters took
    24 ms in slices and 92 ms whole, and on 102,784 float64 ones 0.45 ms and 1.1 ms (measured here)."""
    for start in range(0, len(flats[0]), size):
        yield tuple(flat[start:start + size] for flat in flats)


def flatten(x):
    """The numbers of a nested list, in order."""
    if isinstance(x, list):
        for item in x:
            yield from flatten(item)
    else:
        yield x

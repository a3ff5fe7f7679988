"""The torch engine: the atomic file's model as a PyTorch nn.Module, for CPU, GPU and many GPUs.

Lay GPT.forward beside atomic.gpt: the same steps in the same order, with the same parameter names (wte, wpe,
lm_head, layer0.attn_wq, ...). What PyTorch adds is what the abstractions hide: autograd writes every *_backward
of the python engine for us, one matmul does what a loop of dot products did, and `attention="sdpa"` hands
attention to F.scaled_dot_product_attention, a fused kernel that never materialises the (T, T) weights. GPT.forward
records nothing; record() walks the same steps again and keeps every intermediate.

As in the numpy engine, the weights, their gradients and Adam's moments are flat tensors (P,): a parameter is a
view into the weights and its .grad a view into the gradients (autograd adds into it). Adam is by hand in the
reference's order in float64 (which agrees with the scalar reference) and torch's fused AdamW kernel, the same
arithmetic in one pass, for float32 weights. Under torchrun the module runs inside
DistributedDataParallel, and the loss is scaled so that DDP's averaged gradient is the whole batch's.

Shapes: B = sequences, T = tokens per sequence, C = n_embd, H = n_head, D = C // H, V = vocab_size, P = parameters.
"""
import os
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from microgpt import health
from microgpt.dropout import ATTENTION_OUTPUT, ATTENTION_WEIGHTS, EMBEDDING, MLP_OUTPUT, coordinates, kept, mix32
from microgpt.engines import launched_processes, predicted_tokens
from microgpt.engines.base import Engine as Base
from microgpt.engines.base import Layer, Record, in_chunks
from microgpt.errors import UserError
from microgpt.flops import mfu
from microgpt.layout import split


def rmsnorm(x):  # (..., C) -> (..., C), unit root-mean-square, no gain
    return x * ((x * x).sum(-1, keepdim=True) * x.shape[-1] ** -1 + 1e-5) ** -0.5


def split_heads(x, n_head):  # (B, T, C) -> (B, H, T, D)
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)


def merge_heads(x):  # (B, H, T, D) -> (B, T, C)
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)


def causal_mask(Tq, Tk, device):  # (Tq, Tk) True where query i may see key t: t <= Tk - Tq + i
    return torch.ones(Tq, Tk, dtype=torch.bool, device=device).tril(diagonal=Tk - Tq)


def attention_scores(q, k, scale, visible):  # (B, H, Tq, D), (B, H, Tk, D) -> (B, H, Tq, Tk): q.k * scale, -inf
    scores = (q @ k.transpose(-2, -1)) * scale  # where `visible` (broadcast to it; None: every key) is False
    return scores if visible is None else scores.masked_fill(~visible, float("-inf"))


def dropout_forward(x, dropout, key, strides):
    """x (B, *shape) with each activation of document dropout.documents[b] at coordinate sum(index * stride) dropped
    or scaled by 1 / (1 - p) (microgpt/dropout.py); key: the place's, a 0-d int64 tensor. The product is taken in
    x's arithmetic, so that bfloat16 rounds x * scale once, never the scale itself."""
    documents = dropout.documents.view((-1,) + (1,) * (x.dim() - 1))
    arange = partial(torch.arange, device=x.device)
    survives = kept(dropout.p, key, documents, coordinates(x.shape[1:], strides, arange))
    return torch.where(survives, x * (1 / (1 - dropout.p)), 0.0)


class StepDropout(NamedTuple):
    """A training step's dropout as GPT.forward takes it: tensors, so that a compiled forward is not compiled again
    for every step's keys."""
    p: float
    keys: torch.Tensor  # (4, n_layer) int64: Dropout.key(place, layer) of each place (microgpt/dropout.py)
    documents: torch.Tensor  # (B,) int64: each sequence's place in the whole batch (over every process)


def softmax(z):  # along the last axis, the reference's arithmetic: exp(z - max) * (sum)^-1
    e = torch.exp(z - z.amax(-1, keepdim=True))
    return e * e.sum(-1, keepdim=True) ** -1


class GPT(nn.Module):
    def __init__(self, cfg, weights, attention, has, attn_scale):
        """The model whose parameters are views into `weights`, a flat tensor (P,) in the reference order; `has`: its
        pieces (microgpt/ablations.py), attn_scale what attention multiplies q.k by (engines/base.py)."""
        super().__init__()
        self.cfg, self.attention, self.has, self.attn_scale = cfg, attention, has, attn_scale
        views = {name: part.view(shape) for name, (shape, part) in split(weights, cfg).items()}
        self.wte, self.wpe, self.lm_head = (nn.Parameter(views[name]) for name in ("wte", "wpe", "lm_head"))
        for i in range(cfg.n_layer):  # one block's weights, named layer0.attn_wq, ...
            self.add_module(f"layer{i}", nn.ParameterDict({name.split(".")[1]: nn.Parameter(view) for name, view in
                                                           views.items() if name.startswith(f"layer{i}.")}))

    def forward(self, tokens, cache=None, padding=None, dropout=None):
        """Logits (B, T, V) for tokens (B, T) at the positions after those in `cache` (per layer, keys and values
        (B, H, T', D), which this call extends), or from position 0 without one; padding (B, T), without the causal
        mask: True on the padding, which attention must hide; dropout: a training step's StepDropout, or None. A
        piece the model lacks is skipped (a block, wpe), is the identity (rmsnorm, the ReLU), or replaces the stream
        instead of adding to it (the residual)."""
        cfg, H, has = self.cfg, self.cfg.n_head, self.has
        start = cache[0][0].shape[2] if cache and cache[0] else 0
        x = self.wte[tokens]  # token embedding (B, T, C)
        if has.position:
            x = x + self.wpe[start:start + tokens.shape[1]]  # + position embedding
        x = self.norm(self.drop(x, dropout, EMBEDDING, 0))
        for li in range(cfg.n_layer):
            layer = getattr(self, f"layer{li}")
            if has.attention:  # each head looks back over the cached positions and takes a weighted mix
                x_residual = x
                x = self.norm(x)
                q, k, v = (split_heads(x @ w.T, H) for w in (layer.attn_wq, layer.attn_wk, layer.attn_wv))  # (B,H,T,D)
                if cache is not None:
                    if cache[li]:
                        k, v = torch.cat([cache[li][0], k], dim=2), torch.cat([cache[li][1], v], dim=2)
                    cache[li] = (k, v)
                x = merge_heads(self.attend(q, k, v, padding, dropout, li)) @ layer.attn_wo.T  # (B, T, C)
                x = self.residual(self.drop(x, dropout, ATTENTION_OUTPUT, li), x_residual)
            if has.mlp:  # widen to 4C, keep the positive part, project back; again added to the residual
                x_residual = x
                x = self.norm(x)
                x = self.activation(x @ layer.mlp_fc1.T)  # (B, T, 4C)
                x = x @ layer.mlp_fc2.T  # (B, T, C)
                x = self.residual(self.drop(x, dropout, MLP_OUTPUT, li), x_residual)
        return x @ self.lm_head.T  # (B, T, V)

    def drop(self, x, dropout, place, li):  # (B, T, C) after dropout, in training with dropout
        return x if dropout is None else dropout_forward(x, dropout, dropout.keys[place, li], (x.shape[-1], 1))

    def norm(self, x):  # rmsnorm, or the identity (--ablate rmsnorm)
        return rmsnorm(x) if self.has.rmsnorm else x

    def residual(self, branch, stream):  # a block's output added to the stream, or replacing it (--ablate residual)
        return branch + stream if self.has.residual else branch

    def activation(self, x):  # ReLU, or the identity (--ablate relu)
        return torch.relu(x) if self.has.relu else x

    def visible(self, Tq, Tk, padding, device):  # True where a query may see a key: (Tq, Tk), (B, 1, 1, Tk) or None
        if self.has.causal_mask:
            return causal_mask(Tq, Tk, device)
        return None if padding is None else ~padding[:, None, None, :]

    def attend(self, q, k, v, padding=None, dropout=None, li=0):
        """(B, H, Tq, D) of attention: the fused kernel (whose dropout draws from torch's generator), or spelled out
        (whose dropout masks are every engine's)."""
        Tq, Tk = q.shape[2], k.shape[2]
        if self.attention == "sdpa":  # a whole sequence's causal mask as the kernel's own flag, not as a tensor:
            causal = self.has.causal_mask and Tq == Tk  # a GPU's flash-attention kernel takes no mask tensor
            mask = None if causal else self.visible(Tq, Tk, padding, q.device)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=self.attn_scale,
                                                  dropout_p=0.0 if dropout is None else dropout.p)
        visible = self.visible(Tq, Tk, padding, q.device)
        weights = softmax(attention_scores(q, k, self.attn_scale, visible))  # (B, H, Tq, Tk)
        if dropout is not None:  # (H, Tq, Tk) of each document, with strides of the block
            S = self.cfg.block_size
            weights = dropout_forward(weights, dropout, dropout.keys[ATTENTION_WEIGHTS, li], (S * S, S, 1))
        return weights @ v

    def record(self, tokens):
        """The Record of one forward pass over tokens (T,): GPT.forward's steps again, each kept under its trace name
        (attention spelled out); tests/test_torch.py holds its logits to forward's."""
        H, has = self.cfg.n_head, self.has
        embedding = self.wte[tokens] + self.wpe[:len(tokens)] if has.position else self.wte[tokens]  # (T, C)
        x = embedding_norm = self.norm(embedding)
        layers = []
        for li in range(self.cfg.n_layer):
            layer = getattr(self, f"layer{li}")
            attention, attn_residual = (None,) * 8, x  # (no attention block: the stream passes by)
            if has.attention:
                attn_norm = self.norm(x)
                q, k, v = (attn_norm @ w.T for w in (layer.attn_wq, layer.attn_wk, layer.attn_wv))  # (T, C)
                visible = self.visible(len(tokens), len(tokens), None, tokens.device)
                scores = attention_scores(*(split_heads(t[None], H) for t in (q, k)), self.attn_scale, visible)[0]
                weights = softmax(scores)  # (H, T, T)
                heads = merge_heads((weights @ split_heads(v[None], H)[0])[None])[0]  # (T, C)
                proj = heads @ layer.attn_wo.T
                attn_residual = self.residual(proj, x)
                attention = (attn_norm, q, k, v, scores, weights, heads, proj)
            mlp, x = (None,) * 4, attn_residual  # (no MLP block: the stream passes by)
            if has.mlp:
                mlp_norm = self.norm(attn_residual)
                fc1 = mlp_norm @ layer.mlp_fc1.T  # (T, 4C)
                relu = self.activation(fc1)
                fc2 = relu @ layer.mlp_fc2.T  # (T, C)
                mlp, x = (mlp_norm, fc1, relu, fc2), self.residual(fc2, attn_residual)
            layers.append(Layer(*attention, attn_residual, *mlp, x))
        return Record(embedding, embedding_norm, layers, x @ self.lm_head.T)


def adam_update(p, g, m, v, step, lr_t, beta1, beta2, eps, weight_decay):
    """AdamW on every parameter at once, in place on flat tensors (P,), in the reference's order."""
    if weight_decay:
        p.sub_(lr_t * weight_decay * p)
    bias1, bias2 = 1 - beta1 ** (step + 1), 1 - beta2 ** (step + 1)
    m.mul_(beta1).add_((1 - beta1) * g)
    v.mul_(beta2).add_((1 - beta2) * g**2)
    p.sub_(lr_t * (m / bias1) / ((v / bias2) ** 0.5 + eps))


def fused_adamw_update(p, g, m, v, step, lr_t, beta1, beta2, eps, weight_decay):
    """adam_update as one pass over the flat tensors (P,) where it makes a dozen: the kernel that
    torch.optim.AdamW(fused=True) runs, called as that optimizer does (building one imports torch's compiler, over a
    second). The same arithmetic, rounded in another order: tests/test_torch.py holds the two together."""
    counted = torch.full((), step + 1, dtype=torch.float32, device=p.device)  # the steps taken, this one included
    torch._fused_adamw_([p], [g], [m], [v], [], [counted], lr=lr_t, beta1=beta1, beta2=beta2,
                        weight_decay=weight_decay, eps=eps, amsgrad=False, maximize=False)


class Engine(Base):
    """GPT, its gradients and Adam's moments and, under torchrun, its DistributedDataParallel wrapper."""

    name = "torch"
    dtypes = ("float64", "float32", "bfloat16")

    def __init__(self, cfg, weights, dtype="float64", ablations=(), device=None, attention="manual", compile=False):
        super().__init__(cfg, dtype, ablations)
        gpu = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
        self.device = torch.device(device or gpu)
        distributed = launched_processes() > 1
        if distributed and self.device.type == "cuda":  # each process its own GPU, before anything is on one
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        # bfloat16 trains float32 weights under autocast (CUDA); the others are the weights' own dtype
        self.autocast = dtype == "bfloat16"
        self.dtype = torch.float32 if self.autocast else getattr(torch, dtype)
        if self.dtype == torch.float64 and self.device.type == "mps":
            raise UserError("MPS has no float64; use --dtype float32 on --device mps")
        self.p = torch.as_tensor(np.asarray(weights, dtype=np.float64)).to(self.device, self.dtype)  # (P,) weights
        self.g = torch.zeros_like(self.p)  # (P,) their gradients
        self.m, self.v = torch.zeros_like(self.p), torch.zeros_like(self.p)  # (P,) Adam's moments
        self.model = GPT(cfg, self.p, attention, self.has, self.attn_scale)
        grads = split(self.g, cfg)
        for name, param in self.model.named_parameters():  # autograd adds into these views of the gradients
            param.grad = grads[name][1].view(grads[name][0])
        self.pad_to_block = compile  # one shape for every batch, so torch.compile compiles once
        self.forward_module = torch.compile(self.model) if compile else self.model
        if distributed:
            self._join_process_group()

    def _join_process_group(self):
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.rank, self.world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        unused = not (self.has.position and self.has.attention and self.has.mlp)  # an ablation leaves weights idle
        self.forward_module = nn.parallel.DistributedDataParallel(
            self.forward_module, device_ids=None if self.device.type == "cpu" else [self.device],
            find_unused_parameters=unused)  # (DDP waits for every gradient, unless told some will not come)

    def load_state(self, weights, m, v):
        for flat, saved in zip((self.p, self.m, self.v), (weights, m, v)):
            flat.copy_(torch.as_tensor(np.asarray(saved)))

    def kv_cache(self):
        return [None] * self.cfg.n_layer

    @torch.no_grad()
    def forward_cached(self, tokens, cache):
        with self._autocast():
            return self.model(torch.tensor([tokens], device=self.device), cache)[0].double().cpu().tolist()

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast)

    def _tensors(self, batch):
        """Inputs and targets (B, T) of a batch on the device, padded (to the block for --compile) with input 0 and
        target -1. A stream's windows, all of one length and machine integers (microgpt/datasets.py), become one
        array in one copy (_upload)."""
        seqs = [doc[:self.cfg.block_size + 1] for doc in batch]
        if len({len(seq) for seq in seqs}) == 1:
            padded = torch.from_numpy(np.array(seqs, dtype=np.int64))  # (B, T + 1)
        else:
            padded = nn.utils.rnn.pad_sequence([torch.tensor(seq) for seq in seqs], batch_first=True,
                                               padding_value=-1)
        if self.pad_to_block:
            padded = F.pad(padded, (0, self.cfg.block_size + 1 - padded.shape[1]), value=-1)
        padded = self._upload(padded)
        return padded[:, :-1].clamp(min=0), padded[:, 1:]

    def _upload(self, tensor):
        """A CPU tensor on the device. A GPU copies it from pinned memory, so that the host need not wait: a copy
        from ordinary memory waits for every kernel queued before it."""
        if self.device.type == "cuda":
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)

    def _token_loss_sum(self, module, batch, dropout=None):
        inputs, targets = self._tensors(batch)
        with self._autocast():  # (attention that is not causal must hide the padding: where the target is -1)
            logits = module(inputs, padding=None if self.has.causal_mask else targets == -1, dropout=dropout)
        logits = logits.float() if self.autocast else logits
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1, reduction="sum")

    @torch.no_grad()
    def loss(self, batch):
        return float(self._token_loss_sum(self.model, batch)) / predicted_tokens(batch, self.cfg.block_size)

    def loss_and_grads(self, batch, dropout=None):
        """The mean loss over every predicted token of the (global) batch and its gradient. Under torchrun each rank
        takes every world-th document and divides its token-loss sum by the whole batch's token count, times the
        world size, so that DDP's mean of the ranks' gradients is the batch's gradient."""
        count = predicted_tokens(batch, self.cfg.block_size)
        self.g.zero_()
        mine = batch[self.rank::self.world]
        step_dropout = None if dropout is None else self._step_dropout(dropout, len(mine))
        loss_sum = self._token_loss_sum(self.forward_module, mine, step_dropout)
        (loss_sum * (self.world / count)).backward()
        total = loss_sum.detach()
        if self.world > 1:
            torch.distributed.all_reduce(total)
        return total.double() / count if self._lazy else float(total) / count  # (the same float64 division)

    @property
    def eval_batch(self):
        """Held-out sequences per loss(): on CUDA 4 times as many at once, so that an evaluation of 256 windows is
        one pass and one reading."""
        return 4 * Base.eval_batch if self.device.type == "cuda" else Base.eval_batch

    @property
    def _lazy(self):  # whether to leave results unread: on CUDA when asked (a CPU's are ready when computed; MPS
        return self.lazy_results and self.device.type == "cuda"  # has no float64 to compute the loss's mean in)

    @property
    def _fused(self):
        """Whether Adam is fused_adamw_update: for float32 weights (bfloat16's too) on a CPU or CUDA, where torch has
        the kernel; float64 keeps adam_update, the reference's order of operations."""
        return self.dtype == torch.float32 and self.device.type in ("cpu", "cuda")

    def _step_dropout(self, dropout, count):
        """A training step's Dropout (microgpt/dropout.py) as GPT.forward takes it, for this process's `count`
        documents. The fused attention kernel draws its own masks from torch's generator, seeded here from the
        step's key: the same masks again on a resume, but not those of the other engines, nor of another number of
        processes."""
        n_layer = self.cfg.n_layer
        keys = [[dropout.key(place, li) for li in range(n_layer)] for place in range(MLP_OUTPUT + 1)]
        if self.model.attention == "sdpa":  # (torch's one process-wide generator: nothing else here draws from it)
            torch.manual_seed(mix32(dropout.key(ATTENTION_WEIGHTS) ^ self.rank))
        return StepDropout(dropout.p, self._upload(torch.tensor(keys)),
                           torch.arange(count, device=self.device) * self.world + self.rank)

    @torch.no_grad()
    def clip_grads(self, max_norm):
        norm = sum((g.double() ** 2).sum() for (g,) in self._chunks(self.g)).sqrt()  # 0-d, float64, on the device
        if self._lazy:  # never read here: scaled by min(1, max_norm / norm), which at 1.0 leaves them as they are
            self.g.mul_((torch.full_like(norm, max_norm) / norm).clamp(max=1.0))  # (a true division, as below;
            return norm  # max_norm / norm would multiply by the reciprocal, rounded twice)
        norm = float(norm)
        if norm > max_norm:
            self.g.mul_(max_norm / norm)
        return norm

    @torch.no_grad()
    def adam_step(self, step, lr_t, beta1=0.85, beta2=0.99, eps=1e-8, weight_decay=0.0):
        if self._fused:  # (one pass with no temporaries: over whole tensors)
            fused_adamw_update(self.p, self.g, self.m, self.v, step, lr_t, beta1, beta2, eps, weight_decay)
            return
        for p, g, m, v in self._chunks(self.p, self.g, self.m, self.v):
            adam_update(p, g, m, v, step, lr_t, beta1, beta2, eps, weight_decay)

    def _chunks(self, *flats):  # a GPU keeps its temporaries cached: there, whole tensors at once
        return in_chunks(*flats, **({"size": len(self.p)} if self.device.type == "cuda" else {}))

    @torch.no_grad()
    def record(self, tokens):
        with self._autocast():
            return self.model.record(torch.tensor(tokens, device=self.device))

    # -- placement ---------------------------------------------------------------------------------------------------

    def describe(self):
        """Where and how it computes: 'cpu, 2 threads, float64', 'cuda (NVIDIA H100 80GB HBM3), bfloat16'."""
        where = (f"cuda ({torch.cuda.get_device_name(self.device)})" if self.device.type == "cuda"
                 else f"{self.device.type}, {torch.get_num_threads()} threads")
        return f"{where}, {self.dtype_name}"

    def mfu(self, tokens_per_second):
        return mfu(tokens_per_second, self.cfg, torch.cuda.get_device_name(self.device), self.dtype_name,
                   self.world) if self.device.type == "cuda" else None

    def should_stop(self, requested):
        """Whether any rank asks to stop (Ctrl-C reaches them at different steps): all stop together."""
        if self.world == 1:
            return requested
        flag = torch.tensor([1.0 if requested else 0.0], device=self.device)
        torch.distributed.all_reduce(flag)
        return bool(flag.item())

    # -- the engine's arithmetic for the flat arrays and the health statistics (engines/base.py) ----------------------

    def _export(self, flat):  # a CPU tensor's buffer, seen by NumPy (no copy on the CPU)
        return flat.detach().cpu().numpy()

    def flat(self, x):
        x = x.detach().float() if x.dtype == torch.bfloat16 else x.detach()  # NumPy has no bfloat16
        return tuple(x.shape), x.cpu().numpy().ravel()

    @torch.no_grad()
    def _norms(self, flat):
        parts = [part for _, part in split(flat, self.cfg).values()]
        return torch.stack([torch.linalg.vector_norm(part, dtype=torch.float64) for part in parts]).tolist()

    def _copy(self, flat):
        return flat.clone()

    def _minus(self, a, b):
        return a - b

    def _rms(self, x):
        return float(x.double().square().mean().sqrt())

    def _dead(self, relu):
        return float((~(relu != 0).any(dim=0)).double().mean())

    def _collapsed(self, weights):
        seeing_two = weights[:, 1:, :].float()  # (H, T - 1, T): the queries after the first (causal: seeing 2+)
        if not seeing_two.shape[1]:
            return []
        return torch.nonzero((seeing_two.amax(dim=-1) >= health.COLLAPSED).all(dim=-1)).flatten().tolist()

    def _finite(self, x, masked=False):
        return bool((torch.isfinite(x) | (masked & (x == float("-inf")))).all())

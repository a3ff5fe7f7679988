"""The torch engine: the atomic file's model as a PyTorch nn.Module, for CPU, GPU and many GPUs.

Lay GPT.forward beside atomic.gpt: the same steps in the same order, with the same parameter names
(wte, wpe, lm_head, layer0.attn_wq, ...) and shapes, so a checkpoint moves between this engine and the
others. What PyTorch adds is what the abstractions hide: autograd writes every *_backward of the python
engine for us, one matmul does what a loop of dot products did, and `attention="sdpa"` hands attention to
F.scaled_dot_product_attention (a fused, flash-attention kernel on GPUs) instead of spelling it out.

Adam is still written by hand, in the reference's expression order, so that float64 on the CPU agrees with
the scalar reference to rounding. Under torchrun the module runs inside DistributedDataParallel: each rank
takes its share of the global batch, and the loss is scaled so that DDP's averaged gradient is exactly the
gradient of the mean over all the batch's tokens.

Shapes: B = sequences, T = tokens per sequence, C = n_embd, H = n_head, D = C // H, V = vocab_size.
"""
import os
from array import array

import torch
import torch.nn.functional as F
from torch import nn

from microgpt.atomic import param_shapes
from microgpt.engines import predicted_tokens
from microgpt.errors import UserError

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}
PEAK_FLOPS = {  # dense, per GPU, from the vendors' data sheets: (name fragment, dtype) -> FLOP/s
    ("H100", "bfloat16"): 989e12, ("H100", "float32"): 67e12, ("H100", "float64"): 67e12,
    ("H200", "bfloat16"): 989e12, ("H200", "float32"): 67e12, ("H200", "float64"): 67e12,
    ("A100", "bfloat16"): 312e12, ("A100", "float32"): 19.5e12, ("A100", "float64"): 19.5e12,
}


def flops_per_token(cfg):
    """Training FLOPs per token, as in the PaLM paper's appendix B: 6 per parameter (forward and backward
    through every weight) plus the attention scores and mixing, 12 * n_layer * n_embd * block_size."""
    n_params = sum(rows * cols for rows, cols in param_shapes(cfg).values())
    return 6 * n_params + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size


def rmsnorm(x):  # (..., C) -> (..., C), unit root-mean-square, no gain
    return x * ((x * x).sum(-1, keepdim=True) * x.shape[-1] ** -1 + 1e-5) ** -0.5


def causal_mask(Tq, Tk, device):  # (Tq, Tk) True where query i may see key t: t <= Tk - Tq + i
    return torch.ones(Tq, Tk, dtype=torch.bool, device=device).tril(diagonal=Tk - Tq)


class Layer(nn.Module):
    def __init__(self, C):
        super().__init__()
        for name in ("attn_wq", "attn_wk", "attn_wv", "attn_wo"):
            self.register_parameter(name, nn.Parameter(torch.empty(C, C)))
        self.mlp_fc1 = nn.Parameter(torch.empty(4 * C, C))
        self.mlp_fc2 = nn.Parameter(torch.empty(C, 4 * C))


class GPT(nn.Module):
    def __init__(self, cfg, attention="manual"):
        super().__init__()
        self.cfg, self.attention = cfg, attention
        C = cfg.n_embd
        self.wte = nn.Parameter(torch.empty(cfg.vocab_size, C))
        self.wpe = nn.Parameter(torch.empty(cfg.block_size, C))
        self.lm_head = nn.Parameter(torch.empty(cfg.vocab_size, C))
        for i in range(cfg.n_layer):
            self.add_module(f"layer{i}", Layer(C))  # parameters named layer0.attn_wq, ... as in the reference

    def forward(self, tokens, cache=None, record=None):
        """Logits (B, T, V) for tokens (B, T) at the positions after those in `cache` (per layer, keys and
        values (B, H, T', D), which this call extends), or from position 0 without one. `record`, a dict,
        receives every intermediate under the names microgpt/trace.py lists."""
        cfg, H = self.cfg, self.cfg.n_head
        keep = record.__setitem__ if record is not None else lambda name, value: None
        T = tokens.shape[1]
        start = cache[0][0].shape[2] if cache and cache[0] else 0
        x = self.wte[tokens] + self.wpe[start:start + T]  # (B, T, C)
        keep("embedding", x)
        x = rmsnorm(x)
        keep("embedding.norm", x)
        for li in range(cfg.n_layer):
            layer, L = getattr(self, f"layer{li}"), f"layer{li}."
            residual = x
            x = rmsnorm(x)
            keep(L + "attn.norm", x)
            q, k, v = (x @ w.T for w in (layer.attn_wq, layer.attn_wk, layer.attn_wv))  # (B, T, C) each
            keep(L + "attn.q", q), keep(L + "attn.k", k), keep(L + "attn.v", v)
            q, k, v = split_heads(q, H), split_heads(k, H), split_heads(v, H)  # (B, H, T, D)
            if cache is not None:
                if cache[li]:
                    k, v = torch.cat([cache[li][0], k], dim=2), torch.cat([cache[li][1], v], dim=2)
                cache[li] = (k, v)
            out = self.attend(q, k, v, keep if record is not None else None, L)  # (B, H, T, D)
            keep(L + "attn.heads", merge_heads(out))
            x = merge_heads(out) @ layer.attn_wo.T
            keep(L + "attn.proj", x)
            x = x + residual
            keep(L + "attn.residual", x)
            residual = x
            x = rmsnorm(x)
            keep(L + "mlp.norm", x)
            x = x @ layer.mlp_fc1.T  # (B, T, 4C)
            keep(L + "mlp.fc1", x)
            x = torch.relu(x)
            keep(L + "mlp.relu", x)
            x = x @ layer.mlp_fc2.T  # (B, T, C)
            keep(L + "mlp.fc2", x)
            x = x + residual
            keep(L + "mlp.residual", x)
        return x @ self.lm_head.T  # (B, T, V)

    def attend(self, q, k, v, keep=None, L=""):
        """(B, H, Tq, D) of causal attention; `keep(name, tensor)` records the scores and weights, which
        the fused kernel never materialises, so recording always takes the path spelled out."""
        mask = causal_mask(q.shape[2], k.shape[2], q.device)
        if self.attention == "sdpa" and keep is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** 0.5) ** -1  # (B, H, Tq, Tk)
        scores = scores.masked_fill(~mask, float("-inf"))
        e = torch.exp(scores - scores.amax(-1, keepdim=True))
        att = e * e.sum(-1, keepdim=True) ** -1
        if keep:
            keep(L + "attn.scores", scores)
            keep(L + "attn.weights", att)
        return att @ v


def split_heads(x, n_head):  # (B, T, C) -> (B, H, T, D)
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)


def merge_heads(x):  # (B, H, T, D) -> (B, T, C)
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)


def default_device():
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class Engine:
    """GPT, its Adam moments and, under torchrun, its DistributedDataParallel wrapper, behind the
    interface every engine offers."""

    name = "torch"
    dtypes = ("float64", "float32", "bfloat16")

    def __init__(self, cfg, weights, dtype="float64", device=None, attention="manual", compile=False):
        self.cfg, self.shapes = cfg, param_shapes(cfg)
        self.device = torch.device(device or default_device())
        distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if distributed and self.device.type == "cuda":  # each process its own GPU, before anything is on one
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        # bfloat16 trains float32 weights under autocast (CUDA); the others are the weights' own dtype
        self.autocast = dtype == "bfloat16"
        self.dtype = torch.float32 if self.autocast else DTYPES[dtype]
        if self.dtype == torch.float64 and self.device.type == "mps":
            raise UserError("MPS has no float64; use --dtype float32 on --device mps")
        self.model = GPT(cfg, attention).to(self.device, self.dtype)
        self.load_weights(weights)
        self.params = dict(self.model.named_parameters())
        self.m = {name: torch.zeros_like(p) for name, p in self.params.items()}
        self.v = {name: torch.zeros_like(p) for name, p in self.params.items()}
        self.pad_to_block = compile  # one shape for every batch, so torch.compile compiles once
        self.forward_module = torch.compile(self.model) if compile else self.model
        self.rank, self.world = 0, 1
        if distributed:
            self._join_process_group()

    def _join_process_group(self):
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        backend = "nccl" if self.device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.forward_module = DistributedDataParallel(self.forward_module, device_ids=None if
                                                      self.device.type == "cpu" else [self.device])

    def load_weights(self, weights):
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                p.copy_(torch.as_tensor(weights[name], dtype=torch.float64).view(p.shape))

    # -- the interface -----------------------------------------------------------------------------------

    def state_dict(self):
        return {name: p.detach().double().cpu().tolist() for name, p in self.params.items()}

    def grad_dict(self):
        return {name: p.grad.detach().double().cpu().tolist() for name, p in self.params.items()}

    def new_cache(self):
        return [None] * self.cfg.n_layer

    @torch.no_grad()
    def forward(self, tokens, cache):
        tokens = torch.tensor([tokens], device=self.device)
        with self._autocast():
            return self.model(tokens, cache)[0].double().cpu().tolist()

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast)

    def _tensors(self, batch):
        """Padded inputs and targets (B, T) of a batch of token lists; -1 marks padding."""
        seqs = [doc[:self.cfg.block_size + 1] for doc in batch]
        T = self.cfg.block_size if self.pad_to_block else max(len(s) for s in seqs) - 1
        inputs = torch.zeros(len(seqs), T, dtype=torch.long)
        targets = torch.full((len(seqs), T), -1, dtype=torch.long)
        for b, seq in enumerate(seqs):
            inputs[b, :len(seq) - 1] = torch.tensor(seq[:-1])
            targets[b, :len(seq) - 1] = torch.tensor(seq[1:])
        return inputs.to(self.device), targets.to(self.device)

    def _token_loss_sum(self, module, batch):
        inputs, targets = self._tensors(batch)
        with self._autocast():
            logits = module(inputs)
        logits = logits.float() if self.autocast else logits
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1, reduction="sum")

    @torch.no_grad()
    def loss(self, batch):
        return float(self._token_loss_sum(self.model, batch)) / predicted_tokens(batch, self.cfg.block_size)

    def loss_and_grads(self, batch):
        """The mean loss over every predicted token of the (global) batch and its gradient. Under torchrun
        each rank takes every world-th document and divides its token-loss sum by the whole batch's token
        count, times the world size, so that DDP's mean of the ranks' gradients is the batch's gradient."""
        count = predicted_tokens(batch, self.cfg.block_size)
        mine = batch[self.rank::self.world]
        for p in self.params.values():
            p.grad = None
        loss_sum = self._token_loss_sum(self.forward_module, mine)
        (loss_sum * (self.world / count)).backward()
        total = loss_sum.detach()
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(total)
        return float(total) / count

    @torch.no_grad()
    def clip_grads(self, max_norm):
        norm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in self.params.values())))
        if norm > max_norm:
            for p in self.params.values():
                p.grad.mul_(max_norm / norm)
        return norm

    @torch.no_grad()
    def adam_step(self, step, lr_t, beta1=0.85, beta2=0.99, eps=1e-8, weight_decay=0.0):
        bias1, bias2 = 1 - beta1 ** (step + 1), 1 - beta2 ** (step + 1)
        for name, p in self.params.items():
            g, m, v = p.grad, self.m[name], self.v[name]
            if weight_decay:
                p.sub_(lr_t * weight_decay * p)
            m.mul_(beta1).add_((1 - beta1) * g)
            v.mul_(beta2).add_((1 - beta2) * g**2)
            p.sub_(lr_t * (m / bias1) / ((v / bias2) ** 0.5 + eps))

    def export_state(self):
        state = {}
        for prefix, tensors in (("", self.params), ("adam.m.", self.m), ("adam.v.", self.v)):
            state.update({prefix + name: array("d", t.detach().double().cpu().flatten().tolist())
                          for name, t in tensors.items()})
        return state

    def load_state(self, state):
        with torch.no_grad():
            for prefix, tensors in (("", self.params), ("adam.m.", self.m), ("adam.v.", self.v)):
                for name, t in tensors.items():
                    t.copy_(torch.tensor(list(state[prefix + name]), dtype=torch.float64).view(t.shape))

    def describe(self):
        """Where and how it computes: 'cpu, 2 threads, float64', 'cuda (NVIDIA H100 80GB HBM3), bfloat16'."""
        where = (f"cuda ({torch.cuda.get_device_name(self.device)})" if self.device.type == "cuda"
                 else f"{self.device.type}, {torch.get_num_threads()} threads")
        return f"{where}, {'bfloat16' if self.autocast else str(self.dtype).replace('torch.', '')}"

    @torch.no_grad()
    def trace(self, tokens):
        """Every intermediate of one forward pass over `tokens` (T,), under the names every engine uses
        (microgpt/trace.py lists them), as lists of floats: rows are positions."""
        record = {}
        with self._autocast():
            logits = self.model(torch.tensor([tokens], device=self.device), record=record)
        record["logits"] = logits
        record["probs"] = torch.softmax(logits.double(), dim=-1)
        return {name: value[0].double().cpu().tolist() for name, value in record.items()}

    def mfu(self, tokens_per_second):
        """Model FLOPs utilisation: the share of the GPU's peak that training achieves (None off a known GPU)."""
        if self.device.type != "cuda":
            return None
        name = torch.cuda.get_device_name(self.device)
        dtype = "bfloat16" if self.autocast else str(self.dtype).replace("torch.", "")
        peak = next((flops for (gpu, kind), flops in PEAK_FLOPS.items() if gpu in name and kind == dtype), None)
        # tokens_per_second counts the whole (global) batch, which all the ranks' GPUs share
        return tokens_per_second * flops_per_token(self.cfg) / (peak * self.world) if peak else None

    def should_stop(self, requested):
        """Whether any rank asks to stop (Ctrl-C reaches them at different steps): all stop together."""
        if self.world == 1:
            return requested
        import torch.distributed as dist

        flag = torch.tensor([1.0 if requested else 0.0], device=self.device)
        dist.all_reduce(flag)
        return bool(flag.item())

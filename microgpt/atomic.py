"""The complete algorithm of a GPT in one file of plain, dependency-free Python: data, tokenizer,
autograd, transformer, Adam, training and sampling. Everything else in this project is just efficiency.

Read it top to bottom, in three parts: (1) data, tokenizer and a scalar autograd engine; (2) the
model, a transformer fed one token at a time with a key/value cache; (3) training with Adam, then
sampling. `python microgpt/atomic.py` trains on 32,033 names and invents new ones, printing exactly
the reference run (step 1 loss 3.3660 ... step 1000 loss 2.6497; kamon, ann, karai, ...) in minutes.
It follows Andrej Karpathy's microgpt (2026) operation for operation, so the numbers agree to the
last digit; unlike it, the backward walk needs no recursion (any depth trains) and nothing runs on
import: the rest of the project imports Value, the model and the initialisation from here."""
import argparse
import math
import os
import random
from dataclasses import dataclass

# ----------------------------------------------------------------------------------------------
# Part 1: data, tokenizer, autograd

NAMES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "names.txt")

def load_docs(path):
    """Every non-empty line of a UTF-8 text file is one document (one name, here)."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]

def build_vocab(docs):
    """The tokenizer is just the sorted list of distinct characters: a character's token id is
    its index. One extra id, BOS = len(chars), marks the beginning (and the end) of a document."""
    return sorted(set("".join(docs)))

class Value:
    """One scalar of the computation that remembers how it was made, so that the chain rule can
    run backwards through everything computed from it. Each operation records its inputs
    (children) and its local gradients d(out)/d(child), both known at forward time; backward()
    then multiplies local gradients along every path from the loss to each weight."""
    __slots__ = ("data", "grad", "_children", "_local_grads")

    def __init__(self, data, children=(), local_grads=()):
        self.data = data  # the forward value, a Python float
        self.grad = 0  # d(loss)/d(this value), filled in by backward()
        self._children = children
        self._local_grads = local_grads

    def __add__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        return Value(self.data + other.data, (self, other), (1, 1))

    def __mul__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        return Value(self.data * other.data, (self, other), (other.data, self.data))

    # The local gradient of each elementary function, from calculus: d/da of a**k, log a, exp a, relu a.
    def __pow__(self, k): return Value(self.data**k, (self,), (k * self.data ** (k - 1),))  # k: a number
    def log(self): return Value(math.log(self.data), (self,), (self.data**-1,))
    def exp(self): return Value(math.exp(self.data), (self,), (math.exp(self.data),))
    def relu(self): return Value(max(0, self.data), (self,), (1.0 if self.data > 0 else 0.0,))

    # Everything else is made of the operations above, which fixes the exact arithmetic:
    # a - b is a + (b * -1) and a / b is a * b**-1.
    def __neg__(self): return self * -1
    def __radd__(self, other): return self + other
    def __rmul__(self, other): return self * other
    def __sub__(self, other): return self + (-other)
    def __rsub__(self, other): return other + (-self)
    def __truediv__(self, other): return self * other**-1
    def __rtruediv__(self, other): return other * self**-1

    def backward(self):
        """Set d(self)/d(v) into v.grad for every Value v this one was computed from."""
        # Order the graph so that each node comes after all of its children (a depth-first
        # post-order). The walk keeps its own stack, each entry holding its place among the
        # node's children: a deep model makes a graph deeper than Python's recursion limit.
        topo, visited, stack = [], {self}, [(self, iter(self._children))]
        while stack:
            node, children = stack[-1]
            for child in children:
                if child not in visited:
                    visited.add(child)
                    stack.append((child, iter(child._children)))
                    break
            else:  # every child is placed: the node can follow them
                stack.pop()
                topo.append(node)
        # Walk from the loss back to the leaves; a node used twice sums both contributions.
        self.grad = 1
        for node in reversed(topo):
            for child, local_grad in zip(node._children, node._local_grads):
                child.grad += local_grad * node.grad

# ----------------------------------------------------------------------------------------------
# Part 2: the model

@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 27  # distinct characters + BOS
    block_size: int = 16  # the longest context the model sees, in tokens
    n_layer: int = 1  # transformer blocks
    n_embd: int = 16  # width of the residual stream
    n_head: int = 4  # attention heads; each works on n_embd // n_head channels

def param_shapes(cfg):
    """The name and (rows, columns) of every weight matrix, in creation order. GPT-2's names; no biases."""
    C = cfg.n_embd
    shapes = {"wte": (cfg.vocab_size, C), "wpe": (cfg.block_size, C), "lm_head": (cfg.vocab_size, C)}
    for i in range(cfg.n_layer):
        shapes.update({f"layer{i}.attn_{name}": (C, C) for name in ("wq", "wk", "wv", "wo")})
        shapes[f"layer{i}.mlp_fc1"] = (4 * C, C)
        shapes[f"layer{i}.mlp_fc2"] = (C, 4 * C)
    return shapes

def init_weights(cfg, rng, std=0.08):
    """The reference initialisation, as plain floats: every weight drawn from N(0, std), matrix by
    matrix and row by row. Every engine starts from these numbers, so all compute the same run."""
    return {name: [[rng.gauss(0, std) for _ in range(cols)] for _ in range(rows)]
            for name, (rows, cols) in param_shapes(cfg).items()}

def to_values(weights):  # float matrices -> the same matrices of Values, which gradients flow into
    return {name: [[Value(x) for x in row] for row in mat] for name, mat in weights.items()}

def linear(x, w):  # (nin,) -> (nout,): y[i] = sum_j w[i][j] * x[j], a row of w per output
    return [sum(wi * xi for wi, xi in zip(row, x)) for row in w]

def softmax(logits):  # (n,) -> (n,) probabilities
    mx = max(v.data for v in logits)  # subtracting the max changes nothing but avoids overflow
    exps = [(v - mx).exp() for v in logits]
    total = sum(exps)
    return [e / total for e in exps]

def rmsnorm(x):  # (n,) -> (n,) rescaled to unit root-mean-square; no learned gain
    ms = sum(xi * xi for xi in x) / len(x)
    scale = (ms + 1e-5) ** -0.5
    return [xi * scale for xi in x]

def gpt(token, pos, keys, values, w, cfg):
    """The logits (vocab_size,) of the token that follows `token` at position `pos`.
    keys/values hold, per layer, the key and value vectors of every earlier position; this call
    appends its own, so feeding a sequence one token at a time is causal attention."""
    tok_emb, pos_emb = w["wte"][token], w["wpe"][pos]  # token embedding, position embedding (C,)
    x = rmsnorm([t + p for t, p in zip(tok_emb, pos_emb)])  # their sum, normalised (C,)
    head_dim = cfg.n_embd // cfg.n_head
    for li in range(cfg.n_layer):
        # Attention: each head looks back over the cached positions and takes a weighted mix.
        x_residual = x
        x = rmsnorm(x)
        q = linear(x, w[f"layer{li}.attn_wq"])  # (C,) what this position looks for
        keys[li].append(linear(x, w[f"layer{li}.attn_wk"]))  # (C,) what it offers to later ones
        values[li].append(linear(x, w[f"layer{li}.attn_wv"]))  # (C,) what it passes on
        x_attn = []  # the heads' outputs, side by side (C,)
        for h in range(cfg.n_head):
            s = slice(h * head_dim, (h + 1) * head_dim)
            q_h, k_h, v_h = q[s], [k[s] for k in keys[li]], [v[s] for v in values[li]]
            attn_logits = [sum(q_h[j] * k_t[j] for j in range(head_dim)) / head_dim**0.5 for k_t in k_h]  # (T,)
            attn_weights = softmax(attn_logits)  # (T,)
            x_attn.extend(sum(attn_weights[t] * v_h[t][j] for t in range(len(v_h))) for j in range(head_dim))
        x = linear(x_attn, w[f"layer{li}.attn_wo"])  # (C,)
        x = [a + b for a, b in zip(x, x_residual)]
        # MLP: widen to 4C, keep the positive part, project back; again added to the residual.
        x_residual = x
        x = rmsnorm(x)
        x = [h.relu() for h in linear(x, w[f"layer{li}.mlp_fc1"])]  # (4C,)
        x = linear(x, w[f"layer{li}.mlp_fc2"])  # (C,)
        x = [a + b for a, b in zip(x, x_residual)]
    return linear(x, w["lm_head"])  # (vocab_size,)

def token_losses(tokens, w, cfg):
    """The cross-entropy of predicting each next token of one document [BOS, ..., BOS], cut to
    block_size predictions: -log(probability the model gave the token that came)."""
    keys, values = [[] for _ in range(cfg.n_layer)], [[] for _ in range(cfg.n_layer)]
    losses = []
    for pos in range(min(cfg.block_size, len(tokens) - 1)):
        probs = softmax(gpt(tokens[pos], pos, keys, values, w, cfg))
        losses.append(-probs[tokens[pos + 1]].log())
    return losses

def doc_loss(tokens, w, cfg):
    """The mean loss over one document's predictions: the Value whose gradients train the model."""
    losses = token_losses(tokens, w, cfg)
    return (1 / len(losses)) * sum(losses)

# ----------------------------------------------------------------------------------------------
# Part 3: training and sampling

def adam_step(params, m, v, step, lr_t, beta1=0.85, beta2=0.99, eps=1e-8):
    """Update every parameter (a Value) from its .grad, which is then reset, at learning rate lr_t.
    m and v are running means of the gradient and its square; step counts from 0."""
    for i, p in enumerate(params):
        m[i] = beta1 * m[i] + (1 - beta1) * p.grad
        v[i] = beta2 * v[i] + (1 - beta2) * p.grad**2
        m_hat = m[i] / (1 - beta1 ** (step + 1))  # undo the bias of starting m, v at zero
        v_hat = v[i] / (1 - beta2 ** (step + 1))
        p.data -= lr_t * m_hat / (v_hat**0.5 + eps)
        p.grad = 0

def sample(w, cfg, bos, rng, temperature=0.5):
    """A new document as token ids: feed BOS, draw the next token from the model's distribution
    (sharpened when temperature < 1), feed it back, until BOS comes out or the block is full."""
    keys, values = [[] for _ in range(cfg.n_layer)], [[] for _ in range(cfg.n_layer)]
    token, out = bos, []
    for pos in range(cfg.block_size):
        probs = softmax([logit / temperature for logit in gpt(token, pos, keys, values, w, cfg)])
        token = rng.choices(range(cfg.vocab_size), weights=[p.data for p in probs])[0]
        if token == bos:
            break
        out.append(token)
    return out

def main(argv=None):
    parser = argparse.ArgumentParser(description="Train a GPT on a list of names, then invent new ones.")
    for flag, kind, default in [("--steps", int, 1000), ("--n-layer", int, 1), ("--n-embd", int, 16),
                                ("--n-head", int, 4), ("--block-size", int, 16), ("--seed", int, 42),
                                ("--data", str, NAMES_FILE), ("--num-samples", int, 20),
                                ("--temperature", float, 0.5)]:
        parser.add_argument(flag, type=kind, default=default, help=f"(default: {default})")
    args = parser.parse_args(argv)
    if (min(args.steps, args.n_layer, args.n_embd, args.n_head, args.block_size) < 1 or args.num_samples < 0
            or args.n_embd % args.n_head or not args.temperature > 0):
        parser.error("need sizes and --steps >= 1, --n-embd divisible by --n-head, --temperature > 0")
    try:
        docs = load_docs(args.data)
    except (OSError, UnicodeError) as e:
        parser.error(f"cannot read --data {args.data}: {e}")
    if not docs:
        parser.error(f"--data {args.data} has no non-empty line; give a file with one document per line")
    rng = random.Random(args.seed)  # the one source of randomness, in a fixed order of draws
    rng.shuffle(docs)
    print(f"num docs: {len(docs)}")
    chars = build_vocab(docs)
    bos, stoi = len(chars), {ch: i for i, ch in enumerate(chars)}
    print(f"vocab size: {len(chars) + 1}")
    cfg = GPTConfig(len(chars) + 1, args.block_size, args.n_layer, args.n_embd, args.n_head)
    w = to_values(init_weights(cfg, rng))
    params = [p for mat in w.values() for row in mat for p in row]
    print(f"num params: {len(params)}")
    m, v = [0.0] * len(params), [0.0] * len(params)  # Adam's moment estimates, one per parameter
    for step in range(args.steps):
        tokens = [bos] + [stoi[ch] for ch in docs[step % len(docs)]] + [bos]
        loss = doc_loss(tokens, w, cfg)
        loss.backward()
        adam_step(params, m, v, step, lr_t=0.01 * (1 - step / args.steps))  # decays linearly to 0
        print(f"step {step + 1:4d} / {args.steps:4d} | loss {loss.data:.4f}")
        del loss  # free this step's graph now, not after the next one is built: less garbage collection
    print("\n--- inference (new, hallucinated names) ---")
    for i in range(args.num_samples):
        name = "".join(chars[t] for t in sample(w, cfg, bos, rng, args.temperature))
        print(f"sample {i + 1:2d}: {name}")


if __name__ == "__main__":
    main()

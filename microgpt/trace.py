"""Seeing inside one forward pass: `trace` prints every intermediate value in order, `attention` draws
each head's attention weights as a heat map. Both work on a trained run (--from DIR) or on a fresh model
(the reference initialisation), on the python, numpy and torch engines, whose forward passes record the same
Record (engines/base.py); the scalar engine is the atomic file, which stays free of hooks.

The names, in the order the model computes them (T positions, C = n_embd, H heads, V = vocab_size):
  embedding (T, C)          wte[token] + wpe[position]
  embedding.norm (T, C)     after rmsnorm: the residual stream entering layer 0
  layer{i}.attn.norm (T, C) the stream, rmsnormed, that q, k and v read
  layer{i}.attn.q/k/v (T, C)  queries, keys, values; head h owns columns h*C/H ... (h+1)*C/H
  layer{i}.attn.scores (H, T, T)   q.k / sqrt(head_dim), row = query, column = key; -inf on the future
  layer{i}.attn.weights (H, T, T)  softmax of each row: how much each query takes from each key; 0 on the future
  layer{i}.attn.heads (T, C) the heads' outputs side by side; attn.proj (T, C) after attn_wo
  layer{i}.attn.residual (T, C)  the stream plus the attention's output
  layer{i}.mlp.norm, mlp.fc1 (T, 4C), mlp.relu (T, 4C), mlp.fc2 (T, C), mlp.residual (T, C)
  logits (T, V), probs (T, V)   the next token's scores and their softmax, at every position
A model trained with --ablate has none of a block it lacks (its residual stays: the stream that passes by), and
the identity's output where it lacks rmsnorm or the ReLU.
"""
import json
import random
import sys

from microgpt import atomic, engines
from microgpt.datasets import Dataset
from microgpt.errors import UserError
from microgpt.initialisation import reference_weights
from microgpt.loading import open_model
from microgpt.sampling import softmax

SHADES = " .:-=+*#%@"  # attention weight 0 ... 1


def trace(engine, tokens):
    """Every intermediate of one forward pass over `tokens` (T,), in the order computed: {name: (shape, flat
    array)}, the arrays in the engine's own storage; then the probabilities (T, V) of the next token."""
    traced = {name: engine.flat(value) for name, value in engine.record(tokens).named()}
    (T, V), logits = traced["logits"]
    traced["probs"] = ((T, V), [p for t in range(T) for p in softmax(list(logits[t * V:(t + 1) * V]), 1.0)])
    return traced


def attention_maps(engine, tokens):
    """[(layer, head, weights (T, T) as nested lists)] of one forward pass over `tokens`; a one-line error for a model
    without attention."""
    traced = trace(engine, tokens)
    if "layer0.attn.weights" not in traced:
        raise UserError("this model has no attention (it was trained with --ablate attention), so there is no map to "
                        "draw; `trace` shows what it computes")
    return [(li, h, weights) for li in range(engine.cfg.n_layer)
            for h, weights in enumerate(nested(*traced[f"layer{li}.attn.weights"]))]


def nested(shape, flat):
    """A flat array of the given shape as nested lists of floats (rows of rows)."""
    if len(shape) == 1:
        return [float(x) for x in flat]
    size = len(flat) // shape[0]
    return [nested(shape[1:], flat[i * size:(i + 1) * size]) for i in range(shape[0])]


def model_for(args):
    """(engine, tokenizer, documents?) of --from DIR, or a fresh reference model on names."""
    if args.source:
        engine, tok, meta, _ = open_model(args.source, args.engine)
        return engine, tok, meta["data_format"] == "lines"
    rng = random.Random(42)  # the reference run's first draws: the shuffle, then the weights
    data = Dataset("names", None, rng)
    cfg = atomic.GPTConfig(vocab_size=data.tokenizer.vocab_size)
    return engines.create(args.engine or engines.fastest(), cfg, reference_weights(cfg, rng)), data.tokenizer, True


def prompt_tokens(tok, prompt, documents, block_size):
    ids = ([tok.bos] if documents else []) + tok.encode(prompt)
    if not ids:
        raise UserError("give a --prompt: a stream model needs at least one token to look at")
    if len(ids) > block_size:
        raise UserError(f"the prompt is {len(ids)} tokens with BOS; this model sees at most {block_size}; shorten it")
    return ids


def label(tok, i):
    raw = tok.token_bytes(i)
    return "BOS" if raw == b"<BOS>" else raw.decode("utf-8", errors="replace")


def fmt(x):
    return "    -   " if x == float("-inf") else f"{x:8.4f}"


def print_matrix(name, rows, row_labels, w, max_columns):
    shape = f"({len(rows)}, {len(rows[0])})"
    w.write(f"{name} {shape}\n")
    for lab, row in zip(row_labels, rows):
        cells = " ".join(fmt(x) for x in row[:max_columns]) + (" ..." if len(row) > max_columns else "")
        w.write(f"  {lab[:6]:>6} {cells}\n")


def trace_command(args):
    engine, tok, documents = model_for(args)
    ids = prompt_tokens(tok, args.prompt, documents, engine.cfg.block_size)
    record = {name: nested(*value) for name, value in trace(engine, ids).items()}
    labels = [label(tok, i) for i in ids]
    if args.json:  # -inf (a masked score) is not JSON: null
        intermediates = {name: masked_as_null(value) for name, value in record.items()}
        json.dump({"engine": engine.name, "tokens": labels, "ids": ids, "intermediates": intermediates}, sys.stdout)
        sys.stdout.write("\n")
        return
    w, H = sys.stdout, engine.cfg.n_head
    w.write(f"trace of {labels} on the {engine.name} engine; rows are positions, at most {args.columns} "
            "columns shown\n")
    D = engine.cfg.n_embd // H
    for name, value in record.items():
        if name.endswith(("attn.scores", "attn.weights")):
            for h, matrix in enumerate(value):
                print_matrix(f"{name} head {h}", matrix, labels, w, args.columns)
        elif name.endswith(("attn.q", "attn.k", "attn.v")):
            for h in range(H):
                print_matrix(f"{name} head {h}", [row[h * D:(h + 1) * D] for row in value], labels, w, args.columns)
        elif name != "probs":
            print_matrix(name, value, labels, w, args.columns)
    w.write("probs: the most likely next tokens at each position\n")
    for lab, row in zip(labels, record["probs"]):
        best = sorted(range(len(row)), key=row.__getitem__, reverse=True)[:5]
        w.write(f"  {lab[:6]:>6} " + "  ".join(f"{label(tok, i)!r} {row[i]:.3f}" for i in best) + "\n")


def masked_as_null(value):
    if isinstance(value, list):
        return [masked_as_null(x) for x in value]
    return None if value == float("-inf") else value


def heat_map(weights, labels):
    """Lines drawing one head's (T, T) attention weights: rows are queries, columns keys."""
    width = max(len(lab) for lab in labels)
    lines = [" " * (width + 2) + " ".join(lab[:1] or " " for lab in labels)]
    for lab, row in zip(labels, weights):
        cells = " ".join(SHADES[min(len(SHADES) - 1, int(x * len(SHADES)))] for x in row)
        lines.append(f"{lab:>{width}}  {cells}")
    return lines


def attention_command(args):
    engine, tok, documents = model_for(args)
    ids = prompt_tokens(tok, args.prompt, documents, engine.cfg.block_size)
    maps = attention_maps(engine, ids)
    labels = [label(tok, i) for i in ids]
    w = sys.stdout
    w.write(f"attention of {labels}: rows are queries, columns the keys they see; shades '{SHADES}' = 0 ... 1\n")
    for li, h, weights in maps:
        w.write(f"\nlayer {li}, head {h}\n")
        w.write("\n".join(heat_map(weights, labels)) + "\n")

"""Seeing inside one forward pass: `trace` prints every intermediate value in order, `attention` draws
each head's attention weights as a heat map. Both work on a trained run (--from DIR) or on a fresh model
(the reference initialisation), on the python, numpy and torch engines, which name every intermediate the
same way (the scalar engine is the atomic file, which stays free of hooks).

The names, in the order the model computes them (T positions, C = n_embd, H heads, V = vocab_size):
  embedding (T, C)          wte[token] + wpe[position]
  embedding.norm (T, C)     after rmsnorm: the residual stream entering layer 0
  layer{i}.attn.norm (T, C) the stream, rmsnormed, that q, k and v read
  layer{i}.attn.q/k/v (T, C)  queries, keys, values; head h owns columns h*C/H ... (h+1)*C/H
  layer{i}.attn.scores (H, T, T)   q.k / sqrt(head_dim), row = query, column = key (future: masked)
  layer{i}.attn.weights (H, T, T)  softmax of each row: how much each query takes from each key
  layer{i}.attn.heads (T, C) the heads' outputs side by side; attn.proj (T, C) after attn_wo
  layer{i}.attn.residual (T, C)  the stream plus the attention's output
  layer{i}.mlp.norm, mlp.fc1 (T, 4C), mlp.relu (T, 4C), mlp.fc2 (T, C), mlp.residual (T, C)
  logits (T, V), probs (T, V)   the next token's scores and their softmax, at every position
"""
import json
import random
import sys

from microgpt import atomic, engines
from microgpt.datasets import Dataset
from microgpt.errors import UserError
from microgpt.loading import open_model

SHADES = " .:-=+*#%@"  # attention weight 0 ... 1


def model_for(args):
    """(engine, tokenizer, documents?) of --from DIR, or a fresh reference model on names."""
    name = args.engine or engines.fastest()
    if name == "scalar":
        raise UserError("the scalar engine is the atomic file, which has no hooks to trace; "
                        "use --engine python, numpy or torch (they compute the same numbers)")
    if args.source:
        engine, tok, meta, _ = open_model(args.source, name)
        return engine, tok, meta["data_format"] == "lines"
    rng = random.Random(42)  # the reference run's first draws: the shuffle, then the weights
    data = Dataset("names", None, rng)
    cfg = atomic.GPTConfig(vocab_size=data.tokenizer.vocab_size)
    return engines.create(name, cfg, atomic.init_weights(cfg, rng)), data.tokenizer, True


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
    return "    -   " if x is None or x == float("-inf") else f"{x:8.4f}"


def print_matrix(name, rows, row_labels, w, max_columns):
    shape = f"({len(rows)}, {len(rows[0])})"
    w.write(f"{name} {shape}\n")
    for lab, row in zip(row_labels, rows):
        cells = " ".join(fmt(x) for x in row[:max_columns]) + (" ..." if len(row) > max_columns else "")
        w.write(f"  {lab[:6]:>6} {cells}\n")


def trace_command(args):
    engine, tok, documents = model_for(args)
    ids = prompt_tokens(tok, args.prompt, documents, engine.cfg.block_size)
    record = engine.trace(ids)
    H = engine.cfg.n_head
    for name in record:  # the future half of the score matrices is not computed: show it as masked
        if name.endswith("attn.scores"):
            record[name] = [[[x if t <= i else None for t, x in enumerate(row)] for i, row in enumerate(m)]
                            for m in record[name]]
    labels = [label(tok, i) for i in ids]
    if args.json:
        json.dump({"engine": engine.name, "tokens": labels, "ids": ids, "intermediates": record}, sys.stdout)
        sys.stdout.write("\n")
        return
    w = sys.stdout
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
    record = engine.trace(ids)
    labels = [label(tok, i) for i in ids]
    w = sys.stdout
    w.write(f"attention of {labels}: rows are queries, columns the keys they see; shades '{SHADES}' = 0 ... 1\n")
    for li in range(engine.cfg.n_layer):
        for h, weights in enumerate(record[f"layer{li}.attn.weights"]):
            w.write(f"\nlayer {li}, head {h}\n")
            w.write("\n".join(heat_map(weights, labels)) + "\n")

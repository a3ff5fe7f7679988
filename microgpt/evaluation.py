"""Evaluation: the mean loss of a model over every predicted token of some text, and the `evaluate` command.

`evaluate --from DIR` computes a trained run's held-out loss as train's final evaluation does (every held-out token),
or, with --data FILE, the loss on any text file, read in the run's format (a document per line between BOS tokens,
or running text in consecutive windows): per token, and per character of the text the predicted tokens stand for,
which compares models with different tokenizers. Every engine gives the same number (tests/test_evaluation.py).
"""
import random
import sys

from microgpt.datasets import Dataset, batched, read_text, windows
from microgpt.engines import predicted_tokens
from microgpt.errors import UserError
from microgpt.loading import open_model


def mean_loss(engine, batches, block_size, stop=lambda: False):
    """(total negative log-likelihood / number of predicted tokens, that number) over `batches` of token lists, each
    cut to block_size + 1 tokens; None if stop(), asked before each batch, says so."""
    total = count = 0
    for batch in batches:
        if stop():
            return None
        n = predicted_tokens(batch, block_size)
        total += engine.loss(batch) * n
        count += n
    return total / count, count


def held_out_batches(meta, block_size, batch_size):
    """The batches of the run's held-out part, as train evaluates it; an error if the data is not what it was."""
    settings = meta["settings"]
    spec = ("char",) if settings["tokenizer"] == "char" else ("bpe", settings["vocab_size"], settings["presplit"])
    data = Dataset(settings["data"], meta["data_format"], random.Random(settings["train"]["seed"]), spec)
    if data.sha256 != meta["data_sha256"] or data.tokenizer.to_metadata() != meta["tokenizer"]:
        raise UserError(f"{settings['data']} is not the text this run was trained on (its checksum differs), so its "
                        "held-out part is not the run's; restore it, or give --data FILE to evaluate on a file")
    return data.held_out_batches(block_size, batch_size)


def file_batches(tok, path, fmt, block_size, batch_size):
    """The batches of a text file read in the run's format: a document per line, or running text in windows."""
    _, text, _ = read_text(path)
    if fmt == "lines":
        seqs = [[tok.bos, *tok.encode(line.strip()), tok.bos] for line in text.split("\n") if line.strip()]
    else:
        seqs = windows(tok.encode(text), block_size)
    if not seqs or not predicted_tokens(seqs, block_size):
        raise UserError(f"--data {path} has no text to predict (a stream needs two tokens at least); give a file "
                        "with some text")
    return batched(seqs, batch_size)


def characters(tok, batches, block_size):
    """How many characters the predicted tokens of `batches` stand for, the end of a document counting as one (the
    newline it replaces)."""
    predicted = [seq[1:block_size + 1] for batch in batches for seq in batch]
    return sum(len(tok.decode([t for t in seq if t != tok.bos])) + seq.count(tok.bos) for seq in predicted)


def evaluate_command(args):
    engine, tok, meta, path = open_model(args.source, args.engine, args.checkpoint)
    bs, fmt = engine.cfg.block_size, meta["data_format"]
    if args.data:
        batches, what = file_batches(tok, args.data, fmt, bs, engine.eval_batch), f"{args.data} (as {fmt})"
    else:
        batches = held_out_batches(meta, bs, engine.eval_batch)
        what = f"the held-out part of {meta['settings']['data']}"
    loss, tokens = mean_loss(engine, batches, bs)
    chars = characters(tok, batches, bs)
    w = sys.stdout
    w.write(f"{path}: step {meta['step']}; engine {engine.name} ({engine.describe()})\n"
            f"{what}: {tokens:,} tokens predicted, {chars:,} characters\n"
            f"loss {loss:.4f} nats per token, {loss * tokens / chars:.4f} per character\n")

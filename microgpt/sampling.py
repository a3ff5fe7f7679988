"""Sampling: new text from any engine, token by token, through its key/value cache.

The next token is drawn from softmax(logits / temperature), optionally cut to the top_k most likely
tokens or to the smallest set whose probability reaches top_p; temperature 0 takes the most likely token.
With neither cut, the arithmetic is the reference's (atomic.sample: the logits times temperature**-1,
exp(z - max) * sum**-1, one random() draw per token through random.choices), so every engine draws the
reference run's names from the same random stream.
"""
import math
import random
import sys

from microgpt.datasets import read_text, split_documents
from microgpt.errors import UserError
from microgpt.loading import open_model


def softmax(logits, temperature):  # (V,) floats -> (V,) probabilities
    z = [logit * temperature**-1 for logit in logits]
    mx = max(z)
    e = [math.exp(zi - mx) for zi in z]
    inv = sum(e) ** -1
    return [ei * inv for ei in e]


def pick(logits, rng, temperature, top_k=0, top_p=1.0):
    """One token id drawn from the logits (V,) of the next position. A temperature below 1e-4 is taken
    as 0: dividing logits by less overflows a float, and the distribution is a spike anyway."""
    if temperature < 1e-4:
        return max(range(len(logits)), key=logits.__getitem__)  # greedy: the first of the most likely
    probs = softmax(logits, temperature)
    if top_k and top_k < len(probs):
        kth = sorted(probs, reverse=True)[top_k - 1]
        probs = [p if p >= kth else 0.0 for p in probs]
    if top_p < 1.0:
        order = sorted(range(len(probs)), key=probs.__getitem__, reverse=True)
        total, kept, keep = sum(probs), 0.0, set()
        for i in order:  # the most likely tokens, until they hold top_p of the probability
            keep.add(i)
            kept += probs[i]
            if kept >= top_p * total:
                break
        probs = [p if i in keep else 0.0 for i, p in enumerate(probs)]
    return rng.choices(range(len(probs)), weights=probs)[0]


def stream_start(tok):
    """What a sample of running text starts from without a prompt: a newline, as a fresh line would."""
    return [0] if tok.unknown("\n") else tok.encode("\n")


def generate(engine, prompt, rng, max_new_tokens, block_size, temperature=1.0, top_k=0, top_p=1.0, stop=None):
    """Token ids that follow `prompt` (a non-empty list of ids, at most block_size long): up to max_new_tokens of
    them, ending early at the token `stop` (not included). When the cache holds a whole block, it starts again from
    the last half block of the context, so streams can run on."""
    cache = engine.new_cache()
    context, out = list(prompt), []
    logits = engine.forward(context, cache)[-1]
    cached = len(context)  # positions in the cache
    for i in range(max_new_tokens):
        if i:  # feed the token drawn last
            fed = context[-1:]
            if cached == block_size:  # no position left: a fresh cache, from the last half block
                cache, fed, cached = engine.new_cache(), context[-(block_size // 2 or 1):], 0
            logits = engine.forward(fed, cache)[-1]
            cached += len(fed)
        token = pick(logits, rng, temperature, top_k, top_p)
        if token == stop:
            break
        out.append(token)
        context.append(token)
    return out


def sample_command(args):
    """`sample --from DIR`: text from a trained model, marked where it only repeats a training document."""
    engine, tok, meta, path = open_model(args.source, args.engine, args.checkpoint)
    settings, block_size = meta["settings"], meta["settings"]["model"]["block_size"]
    documents = meta["data_format"] == "lines"
    prompt = tok.encode(args.prompt)  # a character it never saw is a one-line error naming it
    if documents:
        context, stop = [tok.bos, *prompt], tok.bos
    else:
        context, stop = prompt or stream_start(tok), None
    if len(context) > block_size:
        raise UserError(f"the prompt is {len(prompt)} tokens; this model sees at most {block_size} "
                        f"{'(BOS included)' if documents else ''}; shorten it")
    max_new = args.max_new_tokens or (block_size + 1 - len(context) if documents else 500)
    training_docs = set()
    if documents:
        try:
            text = read_text(settings["data"])[1]
            training_docs = set(split_documents(settings["data"], text, random.Random(settings["train"]["seed"]))[0])
        except UserError:
            pass  # the data is gone: samples cannot be compared with it, which the header says
    w = sys.stdout
    w.write(f"{path}: step {meta['step']}, held-out loss {meta['best_held_out']:.4f}; engine {engine.name}\n")
    if documents and not training_docs:
        w.write(f"(the training data {settings['data']} is not readable here: copies are not marked)\n")
    rng = random.Random(args.seed)
    for i in range(args.num_samples):
        ids = generate(engine, context, rng, max_new, block_size, args.temperature, args.top_k, args.top_p, stop)
        text = args.prompt + tok.decode(ids)
        if documents:
            w.write(f"{i + 1:3d}  {text}{'   (a training document)' if text in training_docs else ''}\n")
        else:
            w.write(f"--- {i + 1}\n{text}\n")

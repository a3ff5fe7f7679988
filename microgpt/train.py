"""Training from the command line: the atomic file's model, loss and Adam, step for step the
reference run (same seed, same draws, same numbers), with a progress line and samples at the end."""
import random
import sys
import time

from microgpt import atomic
from microgpt.progress import Progress


def train(docs, model, steps, seed, num_samples, temperature, log_every, stream=sys.stdout):
    """Train a fresh model of shape `model` (n_layer, n_embd, n_head, block_size as a dict) on
    `docs`, one document per step, then print `num_samples` samples. Returns the sample texts."""
    rng = random.Random(seed)  # drawn in the reference's order: shuffle, weights, samples
    docs = list(docs)
    rng.shuffle(docs)
    chars = atomic.build_vocab(docs)
    bos, stoi = len(chars), {ch: i for i, ch in enumerate(chars)}
    cfg = atomic.GPTConfig(vocab_size=len(chars) + 1, **model)
    w = atomic.to_values(atomic.init_weights(cfg, rng))
    params = [p for mat in w.values() for row in mat for p in row]
    stream.write(f"data: {len(docs)} documents, vocab size {cfg.vocab_size}\n"
                 f"model: n_layer {cfg.n_layer}, n_embd {cfg.n_embd}, n_head {cfg.n_head}, "
                 f"block_size {cfg.block_size}: {len(params):,} parameters\n")

    progress = Progress(steps, stream, log_every)
    m, v = [0.0] * len(params), [0.0] * len(params)
    for step in range(steps):
        started = time.perf_counter()
        tokens = [bos] + [stoi[ch] for ch in docs[step % len(docs)]] + [bos]
        loss = atomic.doc_loss(tokens, w, cfg)
        loss.backward()
        atomic.adam_step(params, m, v, step, steps)
        predicted = min(cfg.block_size, len(tokens) - 1)
        progress.update(step + 1, loss.data, predicted, time.perf_counter() - started)

    stream.write(f"samples (temperature {temperature}):\n")
    samples = []
    for i in range(num_samples):
        samples.append("".join(chars[t] for t in atomic.sample(w, cfg, bos, rng, temperature)))
        stream.write(f"{i + 1:3d}  {samples[-1]}\n")
    return samples

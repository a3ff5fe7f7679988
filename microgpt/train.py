"""Training from the command line: the reference run's recipe (seed, data order, initialisation,
Adam with linear decay) on any engine and batch size, with a progress line and samples at the end."""
import random
import sys
import time

from microgpt import atomic, engines
from microgpt.progress import Progress
from microgpt.sampling import sample


def train(docs, model, steps, seed, engine_name, batch_size, num_samples, temperature, log_every,
          lr=0.01, stream=sys.stdout):
    """Train a fresh model of shape `model` (n_layer, n_embd, n_head, block_size as a dict) on `docs`,
    `batch_size` documents per step, then print `num_samples` samples. Returns the engine and the
    sample texts. With batch size 1 and the default seed it is the reference run, on every engine."""
    rng = random.Random(seed)  # drawn in the reference's order: shuffle, weights, samples
    docs = list(docs)
    rng.shuffle(docs)
    chars = atomic.build_vocab(docs)
    bos, stoi = len(chars), {ch: i for i, ch in enumerate(chars)}
    cfg = atomic.GPTConfig(vocab_size=len(chars) + 1, **model)
    engine = engines.create(engine_name, cfg, atomic.init_weights(cfg, rng))
    n_params = sum(rows * cols for rows, cols in atomic.param_shapes(cfg).values())
    stream.write(f"data: {len(docs)} documents, vocab size {cfg.vocab_size}\n"
                 f"model: n_layer {cfg.n_layer}, n_embd {cfg.n_embd}, n_head {cfg.n_head}, "
                 f"block_size {cfg.block_size}: {n_params:,} parameters; engine {engine.name}, "
                 f"batch size {batch_size}\n")

    progress = Progress(steps, stream, log_every)
    for step in range(steps):
        started = time.perf_counter()
        batch = [[bos] + [stoi[ch] for ch in docs[(step * batch_size + b) % len(docs)]] + [bos]
                 for b in range(batch_size)]
        loss = engine.loss_and_grads(batch)
        engine.adam_step(step, lr_t=lr * (1 - step / steps))  # linear decay to zero
        predicted = sum(min(cfg.block_size, len(doc) - 1) for doc in batch)
        progress.update(step + 1, loss, predicted, time.perf_counter() - started)

    stream.write(f"samples (temperature {temperature}):\n")
    samples = []
    for i in range(num_samples):
        samples.append("".join(chars[t] for t in sample(engine, bos, rng, temperature, cfg.block_size)))
        stream.write(f"{i + 1:3d}  {samples[-1]}\n")
    return engine, samples

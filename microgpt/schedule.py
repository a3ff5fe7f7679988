"""Learning-rate schedules: the rate for each step, from the training settings.

  linear   the reference's: lr * (1 - step / steps), from lr down to 0 (after the warmup, if any)
  cosine   half a cosine from lr down to lr * min_lr_ratio (after the warmup, if any)
A warmup of W steps first rises linearly from lr / W to lr, which keeps Adam's first, noisy updates
small; with W = 0 the linear schedule is exactly the reference's expression."""
import math

SCHEDULES = ("linear", "cosine")


def learning_rate(step, cfg):
    """The learning rate of step `step` (counting from 0) under the TrainConfig `cfg`."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "linear":
        if not cfg.warmup:
            return cfg.lr * (1 - step / cfg.steps)  # the reference's expression, to the last bit
        return cfg.lr * (1 - (step - cfg.warmup) / (cfg.steps - cfg.warmup))
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    low = cfg.lr * cfg.min_lr_ratio
    return low + 0.5 * (cfg.lr - low) * (1 + math.cos(math.pi * progress))

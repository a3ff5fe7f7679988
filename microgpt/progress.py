"""The training progress line: step, loss, milliseconds per step, tokens per second and ETA.

On a terminal the line is redrawn after every step and kept every `every` steps; written to a
file or a pipe, only the kept lines appear, so logs stay short and greppable."""
import math


def three_figures(x):
    """7,350 / 98.1 / 4.32 / 0.214: three significant figures, never an exponent."""
    if x >= 100 or x <= 0:
        return f"{x:,.0f}"
    return f"{x:.{2 - math.floor(math.log10(x))}f}"


def format_duration(seconds):
    """12s, 5m07s, 1h02m: precise enough for an estimate, short enough for one line."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    def __init__(self, total_steps, stream, every, first=1, mfu=None):
        """mfu: a function from tokens/s to the share of the hardware's peak (or None where unknown)."""
        self.total, self.stream, self.every, self.first, self.mfu = total_steps, stream, every, first, mfu
        self.live = stream.isatty()
        self.elapsed = 0.0  # seconds spent in training steps so far
        self.window_steps = self.window_tokens = 0  # since the last kept line
        self.window_seconds = 0.0
        self.kept = None  # (ms per step, tokens/s) of the last kept line: over the steps since the one before it

    def update(self, step, loss, tokens, seconds):
        """Report step `step` (1-based): its loss, the tokens it trained on, the seconds it took."""
        self.elapsed += seconds
        self.window_steps += 1
        self.window_tokens += tokens
        self.window_seconds += seconds
        keep = step == self.first or step % self.every == 0 or step == self.total
        if not (keep or self.live):
            return
        ms_per_step = 1000 * self.window_seconds / self.window_steps
        tokens_per_s = self.window_tokens / max(self.window_seconds, 1e-9)
        eta = format_duration(self.elapsed / (step - self.first + 1) * (self.total - step))
        width = len(str(self.total))
        mfu = self.mfu(tokens_per_s) if self.mfu else None
        line = (f"step {step:{width}d}/{self.total} | loss {loss:.4f} | {three_figures(ms_per_step)} ms/step"
                f" | {tokens_per_s:,.0f} tok/s" + (f" | mfu {100 * mfu:.1f}%" if mfu is not None else "")
                + f" | ETA {eta}")
        if self.live:
            self.stream.write("\r\033[K" + line + ("\n" if keep else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        if keep:
            self.kept = (ms_per_step, tokens_per_s)
            self.window_steps = self.window_tokens = 0
            self.window_seconds = 0.0

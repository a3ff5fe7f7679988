"""The figures of a finished run that the GPU benchmark prints (scripts/gpu_check.sh), read from its run directory:
the wall time of the whole run (evaluations and checkpoints included), the time at which an evaluation first reached
each target held-out loss, the best held-out loss, the median tokens per second of the logged steps, and the MFU
those tokens per second are on one of this machine's GPUs (none without a GPU that microgpt/flops.py knows; a run
of several processes is read as one: its MFU per GPU is this over their number).

Usage: python scripts/run_figures.py RUN_DIR [TARGET ...]   (default targets: 1.50 1.47, nanoGPT's Shakespeare)
"""
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from microgpt.errors import UserError
from microgpt.flops import mfu
from microgpt.loading import read
from microgpt.logs import Log


def gpu_name():
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def seconds(value, none="-"):
    return none if value is None else f"{value:.1f} s"


def figures(run_dir, targets):
    """The lines that describe the run in `run_dir`."""
    log, (_, meta, cfg) = Log(run_dir), read(os.path.join(run_dir, "checkpoint.safetensors"))
    settings = meta["settings"]
    tokens_per_s = statistics.median(log.tokens_per_s) if log.tokens_per_s else None
    device = gpu_name()
    share = mfu(tokens_per_s, cfg, device, settings["dtype"]) if device and tokens_per_s else None
    lines = [f"run: {run_dir}, step {meta['step']} of {settings['train']['steps']}",
             f"wall time: {seconds(log.elapsed)}"]
    never = "not reached" if log.elapsed is not None else "- (the run kept no time)"
    lines += [f"time to held-out {target}: {seconds(log.time_to(target), never)}" for target in targets]
    lines += [f"best held-out loss: {meta['best_held_out']:.4f}",
              f"tokens/s: {f'{tokens_per_s:,.0f}' if tokens_per_s else '-'} (median over the logged windows)",
              f"MFU: {f'{share:.1%}' if share is not None else '-'}" + (f" ({device})" if device else "")]
    return lines


def main(argv):
    if not argv or argv[0].startswith("-"):
        raise UserError("usage: python scripts/run_figures.py RUN_DIR [TARGET ...]")
    try:
        targets = [float(t) for t in argv[1:]] or [1.50, 1.47]
    except ValueError:
        raise UserError(f"a target is a held-out loss, such as 1.47; got {' '.join(argv[1:])}") from None
    print("\n".join(figures(argv[0], targets)))


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except UserError as e:
        sys.exit(f"error: {e}")

"""Where the time of a training step goes, for any run `train` can start: the phases of a step, and the operations
(on CUDA, the kernels) that take the most time of their own.

Only ordinary steps are measured, neither logged nor evaluated (scripts/overheads.py measures those), after warm-up
steps that compile and fill the caches; READ_EVERY steps apart, one of them reads the losses (a GPU's wait).
It prints:
  steps       the wall time per step, timed without the profiler (the phases' timers only); on CUDA also how busy
              it kept the GPU (the kernels' time over the wall time) and the share of the kernels' time spent in
              short ones (under 10 microseconds), where a step waits on launches rather than arithmetic
  phases      a step's parts, as the trainer calls them: host time, and on CUDA the time between CUDA events
              recorded on the GPU's stream at the part's start and end (a GPU that waits for the host in between
              counts the wait)
  own time    the operations (torch engine: ATen operations, or on CUDA the GPU's kernels; numpy and python
              engines: Python functions) with the most time of their own, per step
  on CUDA     kernel launches and host-device synchronisations per step (besides the script's own, at the end)
Usage: python scripts/profile_step.py [TRAIN OPTIONS] [--steps-untimed N] [--steps-timed N] [--steps-profiled N]
                                      [--trace FILE]   (a Chrome/Perfetto trace of the profiled steps; torch engine)
e.g.   python scripts/profile_step.py --preset shakespeare-gpu --engine torch --attention sdpa --compile
"""
import contextlib
import cProfile
import functools
import io
import os
import pstats
import sys
import tempfile
import time
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

try:  # (the torch engine's; the others are profiled without it)
    import torch
except ImportError:
    torch = None

from microgpt.arguments import Formatter, whole_number
from microgpt.cli import Parser
from microgpt.errors import UserError
from microgpt.progress import Progress
from microgpt.settings import add_train_options, settings_from_args
from microgpt.train import READ_EVERY, Trainer

PHASES = (  # (what is timed, the attribute of the trainer that holds it, the method)
    ("batch", "data", "batch"),
    ("loss and gradients", "engine", "loss_and_grads"),
    ("gradient clipping", "engine", "clip_grads"),
    ("Adam", "engine", "adam_step"),
    ("reading losses", None, "_read_losses"),
)
SHORT_KERNEL_US = 10  # a kernel this short takes about as long to launch as to run
ROWS = 12


class Phases:
    """Wraps the trainer's methods of PHASES so that each call is timed on the host and, on CUDA, between CUDA
    events recorded around it (read once the steps are done: recording an event does not wait for the GPU)."""

    def __init__(self, trainer, cuda):
        self.cuda, self.host, self.events = cuda, {}, {}
        for label, holder, method in PHASES:
            target = getattr(trainer, holder) if holder else trainer
            setattr(target, method, self._timed(label, getattr(target, method)))

    def _timed(self, label, method):
        @functools.wraps(method)
        def timed(*args, **kwargs):
            events = self._cuda_events() if self.cuda else None
            started = time.perf_counter()
            with self._annotation(label):
                result = method(*args, **kwargs)
            self.host[label] = self.host.get(label, 0.0) + time.perf_counter() - started
            if events:
                events[1].record()
                self.events.setdefault(label, []).append(events)
            return result
        return timed

    def _cuda_events(self):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        return start, end

    def _annotation(self, label):  # the phase's name in a torch trace
        return torch.profiler.record_function(label) if torch else contextlib.nullcontext()

    def reset(self):
        self.host, self.events = {}, {}

    def table(self, steps, seconds):
        """Lines: each phase's milliseconds per step, on the host and (CUDA) on the GPU, and the rest of the
        `seconds` per step on the host (the loop itself)."""
        lines = [f"  {'phase':<22}{'host ms':>9}" + (f"{'GPU ms':>9}" if self.cuda else "")]
        for label, _, _ in PHASES:
            row = f"  {label:<22}{1e3 * self.host.get(label, 0.0) / steps:>9.3f}"
            if self.cuda:
                row += f"{sum(a.elapsed_time(b) for a, b in self.events.get(label, [])) / steps:>9.3f}"
            lines.append(row)
        lines.append(f"  {'the rest':<22}{1e3 * (seconds - sum(self.host.values()) / steps):>9.3f}")
        return lines


def ordinary_trainer(args, steps, out_dir):
    """A Trainer of the run the train options describe, whose next `steps` steps are neither logged nor evaluated."""
    if args.resume or args.out:
        raise UserError(f"--{'resume' if args.resume else 'out'}: the profile trains a new run of its own in a "
                        "temporary directory; drop it")
    settings = settings_from_args(args)
    far = settings.train.steps + steps + 1
    settings = replace(settings, log_every=far, eval_every=far, train=replace(settings.train, steps=far))
    return Trainer(settings, out_dir, stream=io.StringIO())


def timed_steps(trainer, progress, steps, synchronize):
    """Seconds per step over `steps` steps, the GPU's work finished at both ends."""
    synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(progress)
    synchronize()
    return (time.perf_counter() - started) / steps


def on_gpu(event):
    """Whether a profiler event is the GPU's own work (a kernel, a copy), not the GPU's copy of a named range."""
    return event.device_type == torch.autograd.DeviceType.CUDA and not event.is_user_annotation


def torch_own_time(trainer, progress, steps, cuda, trace):
    """Lines: the operations (CPU) or kernels (CUDA) with the most time of their own per step; on CUDA the launches
    and synchronisations per step and the kernels' total and short share. Returns (lines, kernel seconds per step)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.train_step(progress)
        if cuda:
            torch.cuda.synchronize()
    if trace:
        prof.export_chrome_trace(trace)
    averages = prof.key_averages()
    if cuda:
        own = {a.key: (a.self_device_time_total, a.count) for a in averages if on_gpu(a) and a.self_device_time_total}
    else:
        own = {a.key: (a.self_cpu_time_total, a.count) for a in averages if not a.is_user_annotation}
    total = sum(us for us, _ in own.values())
    lines = [f"  {'ms/step':>8}{'share':>7}{'calls':>7}  {'kernel' if cuda else 'operation'}"]
    for key, (us, count) in sorted(own.items(), key=lambda item: -item[1][0])[:ROWS]:
        lines.append(f"  {us / 1e3 / steps:>8.3f}{us / total:>7.1%}{count / steps:>7.1f}  {key[:90]}")
    kernel_seconds = None
    if cuda:
        kernel_seconds = total / 1e6 / steps
        short = sum(e.device_time_total for e in prof.events() if on_gpu(e) and e.device_time_total < SHORT_KERNEL_US)
        calls = {a.key: a.count for a in averages}
        launches = sum(count for key, count in calls.items() if key.startswith(("cudaLaunchKernel", "cuLaunchKernel")))
        syncs = sum(calls.get(key, 0) for key in ("cudaStreamSynchronize", "cudaDeviceSynchronize",
                                                  "cudaEventSynchronize")) - 1  # (not the one above)
        lines += [f"  kernels: {kernel_seconds * 1e3:.3f} ms per step, {short / total:.1%} of it in kernels under "
                  f"{SHORT_KERNEL_US} us; {launches / steps:.1f} launches and {syncs / steps:.2f} host-device "
                  "synchronisations per step"]
    return lines, kernel_seconds


def python_own_time(trainer, progress, steps):
    """Lines: the Python functions with the most time of their own per step (cProfile)."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        trainer.train_step(progress)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (primitive calls, calls, own s, cumulative s, _)}
    total = sum(own for _, _, own, _, _ in stats.values())
    lines = [f"  {'ms/step':>8}{'share':>7}{'calls':>7}  function"]
    for (file, line, name), (_, calls, own, _, _) in sorted(stats.items(), key=lambda item: -item[1][2])[:ROWS]:
        where = f"{os.path.basename(file)}:{line}({name})" if line else name
        lines.append(f"  {own * 1e3 / steps:>8.3f}{own / total:>7.1%}{calls / steps:>7.1f}  {where}")
    return lines


def main(argv=None):
    parser = Parser(prog="profile_step.py", description=__doc__.split("\n")[0], formatter_class=Formatter)
    add_train_options(parser)
    parser.add_argument("--steps-untimed", type=whole_number(1), default=10, metavar="N",
                        help="steps before any measurement (compiling, caches) (default: 10)")
    parser.add_argument("--steps-timed", type=whole_number(1), default=2 * READ_EVERY, metavar="N",
                        help=f"steps timed without the profiler (default: {2 * READ_EVERY})")
    parser.add_argument("--steps-profiled", type=whole_number(1), default=2 * READ_EVERY, metavar="N",
                        help=f"steps profiled (default: {2 * READ_EVERY})")
    parser.add_argument("--trace", metavar="FILE", help="write a Chrome/Perfetto trace of the profiled steps (torch)")
    args = parser.parse_args(argv)
    try:
        report(args)
    except UserError as e:
        parser.exit(e.exit_code, f"{parser.prog}: error: {e}\n")


def report(args):
    """Measure the steps of the run `args` describe, as the module's docstring says, and print the tables."""
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = ordinary_trainer(args, args.steps_untimed + args.steps_timed + args.steps_profiled, out_dir)
        engine = trainer.engine
        if args.trace and engine.name != "torch":
            raise UserError(f"--trace records torch's operations, and the {engine.name} engine has none; add "
                            "--engine torch")
        device = engine.device.type if engine.name == "torch" else "cpu"
        cuda = device == "cuda"  # (a GPU's work is queued: the timings wait for it)
        synchronize = getattr(torch, device).synchronize if device in ("cuda", "mps") else lambda: None
        progress = Progress(trainer.settings.train.steps, io.StringIO(), trainer.settings.log_every)
        phases = Phases(trainer, cuda)
        print(f"engine {engine.name} ({engine.describe()}); batch {trainer.settings.train.batch_size}, model "
              f"{trainer.settings.model}; after {args.steps_untimed} untimed step{'s' * (args.steps_untimed > 1)}")
        timed_steps(trainer, progress, args.steps_untimed, synchronize)
        phases.reset()
        seconds = timed_steps(trainer, progress, args.steps_timed, synchronize)
        phase_lines = phases.table(args.steps_timed, seconds)
        if engine.name == "torch":
            own_lines, kernel_seconds = torch_own_time(trainer, progress, args.steps_profiled, cuda, args.trace)
        else:
            own_lines, kernel_seconds = python_own_time(trainer, progress, args.steps_profiled), None
    busy = f"; the GPU busy {kernel_seconds / seconds:.0%} of it" if kernel_seconds else ""
    print(f"steps: {seconds * 1e3:.2f} ms per step over {args.steps_timed} steps{busy}")
    print(f"phases (the {args.steps_timed} timed steps):", *phase_lines, sep="\n")
    print(f"own time ({args.steps_profiled} steps under the profiler):", *own_lines, sep="\n")


if __name__ == "__main__":
    main()

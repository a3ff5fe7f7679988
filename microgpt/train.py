"""Training: the reference recipe grown into a workflow. Any engine and batch size, a held-out loss every
`eval_every` steps, a checkpoint at each of them (and the best one kept), training health and a JSONL log, Ctrl-C
that saves and says how to resume, and a resume that continues bit for bit as if never stopped. (What a run's
settings are, and how the command line makes them, is microgpt/config.py's and microgpt/settings.py's.)

A run directory holds:
  checkpoint.safetensors   the latest state (weights, Adam's moments, step, settings, random state)
  best.safetensors         the state with the lowest held-out loss so far
  log.jsonl                one JSON object per logged step and per evaluation
"""
import json
import math
import os
import random
import sys
import time
from typing import NamedTuple

from microgpt import ablations, atomic, checkpoint, engines, health
from microgpt.datasets import Dataset
from microgpt.dropout import Dropout
from microgpt.errors import UserError
from microgpt.evaluation import mean_loss
from microgpt.initialisation import reference_weights
from microgpt.layout import checkpoint_tensors, param_count, state_from_checkpoint
from microgpt.metadata import to_state
from microgpt.progress import Progress
from microgpt.sampling import generate, stream_start
from microgpt.schedule import learning_rate
from microgpt.settings import choose_out_dir, resume_settings, settings_from_args
from microgpt.signals import Requests, Stopped, handling


class Trainer:
    def __init__(self, settings, out_dir, stream=sys.stdout, resume_from=None):
        """A run of `settings` in `out_dir`, from the reference initialisation, or, with resume_from (a checkpoint's
        tensors and metadata), from where that run stopped."""
        self.settings, self.out_dir, self.stream = settings, out_dir, stream
        tc = settings.train
        self.rng = random.Random(tc.seed)  # the reference's one stream: shuffle, weights, samples
        self.data = Dataset(settings.data, settings.format, self.rng, settings.tokenizer_spec())
        self.data.check(settings.model["block_size"])
        self.cfg = atomic.GPTConfig(vocab_size=self.data.tokenizer.vocab_size, **settings.model)
        # the same data and the same code make the same tokenizer, and so the shapes the checkpoint holds
        if resume_from and self.data.tokenizer.to_metadata() != resume_from[1]["tokenizer"]:
            raise UserError(f"the tokenizer made from --data {settings.data} is not the one the run in {out_dir} "
                            "was trained with (was it started by another version of microgpt?); start a new run")
        state = state_from_checkpoint(resume_from[0], self.cfg) if resume_from else None
        weights = state[0] if state else reference_weights(self.cfg, self.rng, tc.init_std)
        self.engine = engines.create(settings.engine or engines.fastest(), self.cfg, weights, settings.dtype,
                                     settings.ablate, **settings.engine_options)
        self.engine.lazy_results = True  # a GPU's losses are read every READ_EVERY steps, not waited for each step
        self.unread = []  # the steps taken whose losses are not read yet (Unread)
        if tc.dropout and self.engine.name == "scalar":
            raise UserError(f"--dropout {tc.dropout}: the scalar engine is the atomic file, which has no dropout; use "
                            "--engine python, numpy or torch")
        if tc.batch_size < self.engine.world:
            raise UserError(f"--batch-size {tc.batch_size} gives some of the {self.engine.world} processes nothing "
                            f"to do; use a batch of at least {self.engine.world}")
        # under torchrun only rank 0 writes: the progress, the log and the checkpoints
        self.is_main = self.engine.rank == 0
        if not self.is_main:
            self.stream = open(os.devnull, "w")  # lives as long as the trainer
        try:  # find out now, not after an hour of training, if the run directory cannot be written
            os.makedirs(out_dir, exist_ok=True)
            with open(os.path.join(out_dir, "log.jsonl"), "a"):
                pass
        except OSError as e:
            raise UserError(f"cannot write the run directory {out_dir}: {e.strerror}; choose another --out") from None
        self.step, self.best, self.smoothed = 0, math.inf, None
        self.evaluation_due = False  # a signal cut this step's evaluation short: run() does it first
        self.elapsed_before, self.started = 0.0, time.perf_counter()  # the run's time: in earlier processes, here
        if resume_from:
            meta = resume_from[1]
            self.engine.load_state(*state)
            self.step, self.best, self.smoothed = meta["step"], meta["best_held_out"], meta["smoothed"]
            self.evaluation_due, self.elapsed_before = meta["evaluation_due"], meta["elapsed"]
            self.rng.setstate(to_state(meta["rng"]))
        # Ctrl-C, and SIGTERM (a scheduler's or torchrun's way to stop a run), finish the step and save
        self.requests = Requests(self.stream, "finishing this step (an evaluation is cut short), then saving")
        self.monitor = health.Monitor()
        self.stop_requested = False  # decided between steps (by every rank together, under torchrun)
        self.last_saved_step = self.step if resume_from else None

    # -- checkpoints and logs ----------------------------------------------------------------------------------------

    def save(self):
        """Write the state to checkpoint.safetensors, from the engine's flat arrays; return its path."""
        path = os.path.join(self.out_dir, "checkpoint.safetensors")
        if not self.is_main:
            return path
        metadata = {"settings": self.settings.fixed(), "vocab_size": self.cfg.vocab_size,
                    "tokenizer": self.data.tokenizer.to_metadata(), "data_sha256": self.data.sha256,
                    "data_format": self.data.format, "step": self.step, "best_held_out": self.best,
                    "smoothed": self.smoothed, "rng": self.rng.getstate(), "engine": self.engine.name,
                    "eval_every": self.settings.eval_every, "engine_options": self.settings.engine_options,
                    "evaluation_due": self.evaluation_due, "elapsed": self.elapsed()}
        checkpoint.save(path, checkpoint_tensors(self.cfg, self.engine.weights(), *self.engine.moments()), metadata)
        self.last_saved_step = self.step
        return path

    def log(self, record):
        """One line of log.jsonl: the record, and the seconds the run has taken so far (training, evaluations)."""
        if self.is_main:
            with open(os.path.join(self.out_dir, "log.jsonl"), "a") as f:
                f.write(json.dumps({**record, "elapsed": self.elapsed()}) + "\n")

    def elapsed(self):
        """Seconds since the run started, over every process that continued it; None for a run begun by a microgpt
        that did not keep time."""
        return None if self.elapsed_before is None else self.elapsed_before + time.perf_counter() - self.started

    # -- evaluation ----------------------------------------------------------------------------------------------

    def held_out_loss(self, final=False):
        """Total negative log-likelihood over held-out tokens / their number (all of them at the end); None if a
        signal cut it short."""
        bs = self.cfg.block_size
        batches = self.data.held_out_batches(bs, self.engine.eval_batch, None if final else self.settings.eval_windows)
        found = mean_loss(self.engine, batches, bs, lambda: self.engine.should_stop(self.requests.received is not None))
        return None if found is None else found[0]

    def evaluate(self, final=False):
        """The held-out loss, a checkpoint, and best.safetensors (the same file) when the loss is the lowest yet."""
        held_out = self.held_out_loss(final)
        self.evaluation_due = held_out is None
        if self.evaluation_due:  # cut short by a signal: run() saves the state, and a resume evaluates first
            return
        improved = held_out < self.best
        self.best = min(self.best, held_out)
        path, note = self.save(), ""
        if improved and self.is_main:
            best = os.path.join(self.out_dir, "best.safetensors")
            checkpoint.duplicate(path, best)
            note = f"; best so far, saved {best}"
        scope = "all held-out tokens" if final or self.data.format == "lines" else "held-out sample"
        self.stream.write(f"step {self.step}: held-out loss {held_out:.4f} ({scope}){note}\n")
        self.log({"step": self.step, "held_out_loss": held_out, "held_out_scope": scope})

    # -- the loop ------------------------------------------------------------------------------------------------

    def run(self):
        """Train to the last step (or until Ctrl-C or SIGTERM), evaluating and saving on the way."""
        tc, w = self.settings.train, self.stream
        progress = Progress(tc.steps, w, self.settings.log_every, first=self.step + 1, mfu=self.engine.mfu)
        with handling(self.requests.note):
            if self.evaluation_due:
                self.evaluate(final=self.step == tc.steps)
            while not self._stopping() and self.step < tc.steps:
                self.train_step(progress)
        if self.stop_requested:  # (a finished run saved at its final evaluation)
            self._read_losses(progress)  # (the smoothed loss the checkpoint keeps)
            path = self.save()
            world = self.engine.world
            launcher = f"torchrun --nproc_per_node={world}" if world > 1 else "python"
            cut = " (its evaluation was cut short: the resumed run does it first)" if self.evaluation_due else ""
            w.write(f"interrupted after step {self.step}{cut}; saved {path}\n"
                    f"resume with: {launcher} -m microgpt train --resume {self.out_dir}\n")

    def _stopping(self):
        """Whether to stop before the next step. Under torchrun every rank must agree on the same step, and asking
        them is a reduction that waits for the GPUs: they settle it every READ_EVERY steps."""
        between = self.step % READ_EVERY and self.step < self.settings.train.steps and not self.evaluation_due
        if self.engine.world > 1 and between:  # (every rank has the same step and the same cut-short evaluation)
            return False
        self.stop_requested = self.engine.should_stop(self.requests.received is not None)
        return self.stop_requested

    def train_step(self, progress):
        """One step: a batch, its loss and gradients, clipping, Adam; the losses read (each step's at once on a CPU,
        every READ_EVERY steps' on a GPU) and checked; the log and health on logged steps, an evaluation every
        eval_every steps and at the end."""
        s, tc = self.settings, self.settings.train
        started = time.perf_counter()
        step = self.step + 1  # the step taken here, counted from 1 as printed
        logged = step % s.log_every == 0 or step == tc.steps
        evaluated = step % s.eval_every == 0 or step == tc.steps
        batch = self.data.batch(self.step, tc.batch_size, self.cfg.block_size, tc.seed)
        first = batch[0][:self.cfg.block_size]  # (a document that health and a divergence look into)
        loss = self.engine.loss_and_grads(batch, Dropout(tc.dropout, tc.seed, self.step) if tc.dropout else None)
        if logged:  # read now (the earlier steps' first, so that a divergence names its first step): waiting for a
            self._read_losses(progress)  # GPU counts in the step's time, not in the health snapshot's below
            loss = float(loss)
        if isinstance(loss, float) and not loss < HOPELESS:  # read at once (a CPU's, a logged step's): stop before
            raise TrainingDiverged(step, loss, self.out_dir, self.last_saved_step,  # Adam spoils the weights that
                                   self.engine.first_non_finite(first))  # made it
        snapshot_started = time.perf_counter()
        snapshot = self.engine.health_snapshot() if logged else None  # (not counted in the step's time)
        snapshot_seconds = time.perf_counter() - snapshot_started
        grad_norm = self.engine.clip_grads(tc.grad_clip) if tc.grad_clip else None
        lr = learning_rate(self.step, tc)
        self.engine.adam_step(self.step, lr, tc.beta1, tc.beta2, tc.eps, tc.weight_decay)
        self.step = step
        seconds = time.perf_counter() - started - snapshot_seconds
        tokens = engines.predicted_tokens(batch, self.cfg.block_size)
        self.unread.append(Unread(step, loss, tokens, seconds))
        if evaluated or step % READ_EVERY == 0 or isinstance(loss, float):
            loss = self._read_losses(progress)
        if logged:  # (the time of the steps since the last logged one: a GPU's lands in the steps that read losses)
            ms_per_step, tokens_per_s = progress.kept
            self.log({"step": step, "train_loss": loss, "train_loss_smooth": self.smoothed, "lr": lr,
                      "grad_norm": None if grad_norm is None else float(grad_norm), "ms_per_step": ms_per_step,
                      "tokens_per_s": tokens_per_s, "health": self._health(snapshot, first)})
        if evaluated:
            self.evaluate(final=step == tc.steps)

    def _read_losses(self, progress):
        """Read the unread steps' losses, in order (waiting for a GPU to finish them), and return the last: the
        first that is not finite stops training, naming its step; each moves the smoothed loss and the progress."""
        loss = None  # (none unread)
        for unread in self.unread:
            loss = float(unread.loss)
            if not loss < HOPELESS:  # (NaN, too; where it first appears is not found: the weights have moved on)
                raise TrainingDiverged(unread.step, loss, self.out_dir, self.last_saved_step)
            self.smoothed = loss if self.smoothed is None else 0.9 * self.smoothed + 0.1 * loss
            progress.update(unread.step, loss, unread.tokens, unread.seconds)
        self.unread = []
        return loss

    def _health(self, snapshot, tokens):
        """The health record of the step just taken (microgpt/health.py), its warnings printed."""
        stats = self.engine.health(snapshot, tokens)
        warnings = self.monitor.warnings(self.step, stats)
        for line in warnings + ([health.summary(stats)] if self.settings.health else []):
            self.stream.write(line + "\n")
        return {"grad_norm": stats["grad_norm"], "tensors": stats["tensors"], "layers": stats["layers"],
                "warnings": warnings}

    def samples(self, num_samples, temperature):
        """Samples in the reference's way (the run's random stream continues), one at a time: documents from BOS,
        streams from a newline."""
        tok = self.data.tokenizer
        if self.data.format == "lines":
            prompt, stop, length = [tok.bos], tok.bos, self.cfg.block_size
        else:
            prompt, stop, length = stream_start(tok), None, 300
        for _ in range(num_samples):
            yield tok.decode(generate(self.engine, prompt, self.rng, length, self.cfg.block_size, temperature,
                                      stop=stop))


class Unread(NamedTuple):
    """A step taken whose loss the trainer has not read yet."""
    step: int  # counted from 1
    loss: object  # a float, or a GPU's 0-d tensor (engines/base.py, lazy_results)
    tokens: int  # predicted in its batch
    seconds: float  # the host's time for the step (a GPU's own time lands in the step that reads it)


# A GPU's losses are read every READ_EVERY steps: a run whose loss stops being finite stops within them, and between
# readings the host queues each step's work without waiting for the GPU to finish the last
READ_EVERY = 10

# A mean loss above -log of the smallest float64 (744 nats a token) gives the right tokens probabilities that no float
# can hold: whatever the engine's arithmetic makes of it (infinity from -log 0, or a finite number from the logits, as
# torch computes it), the run has diverged
HOPELESS = -math.log(math.ulp(0.0))


class TrainingDiverged(UserError):
    exit_code = 1  # not a mistake in the command: the run itself went wrong

    def __init__(self, step, loss, out_dir, saved_step, where=None):
        saved = os.path.join(out_dir, "checkpoint.safetensors")
        kept = f"the last good checkpoint is {saved} (step {saved_step})" if saved_step is not None \
            else "no checkpoint was saved yet"
        first = f" (it first appears in {where})" if where else ""
        super().__init__(f"training diverged: the loss is {loss} at step {step}{first}; {kept}; "
                         "lower --lr, add --warmup or set --grad-clip 1")


def train_command(args):
    """`train`: a run from the options (or continued with --resume), its header, the run, the samples."""
    if args.resume:
        settings, state = resume_settings(args)
        out_dir = args.resume
    else:
        settings, state = settings_from_args(args), None
        out_dir = choose_out_dir(args, settings)
    trainer = Trainer(settings, out_dir, resume_from=state)
    w, cfg, tc = trainer.stream, trainer.cfg, settings.train
    w.write(f"data: {trainer.data.describe()}\n"
            f"model: n_layer {cfg.n_layer}, n_embd {cfg.n_embd}, n_head {cfg.n_head}, block_size "
            f"{cfg.block_size}: {param_count(cfg):,} parameters"
            f"{f' ({ablations.describe(settings.ablate)})' if settings.ablate else ''}; engine {trainer.engine.name} "
            f"({trainer.engine.describe()})\n"
            f"training: {tc.steps} steps of batch {tc.batch_size}, lr {tc.lr} ({tc.schedule}"
            f"{f', warmup {tc.warmup}' if tc.warmup else ''}), weight decay {tc.weight_decay}, grad clip "
            f"{tc.grad_clip or 'off'}{f', dropout {tc.dropout}' if tc.dropout else ''}, seed {tc.seed}\n"
            f"run directory: {out_dir}" + (f" (resuming after step {trainer.step})" if state else "") + "\n")
    trainer.run()
    if trainer.stop_requested:
        return
    w.write(f"best held-out loss {trainer.best:.4f}; checkpoints in {out_dir}\n")
    if args.num_samples:
        w.write(f"samples (temperature {args.temperature}):\n")
        try:
            for i, text in enumerate(trainer.samples(args.num_samples, args.temperature)):
                w.write(f"{i + 1:3d}  {text}\n" if trainer.data.format == "lines" else f"--- {i + 1}\n{text}\n")
        except Stopped as stop:
            w.write(f"\n{stop.name}: samples cut short; the run is complete, saved in {out_dir}\n")
            return stop.exit_code
    return 0

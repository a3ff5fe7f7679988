"""Training: the reference recipe grown into a workflow. Any engine and batch size, a held-out loss every
`eval_every` steps, a checkpoint at each of them (and the best one kept), a JSONL log, Ctrl-C that saves
and says how to resume, and a resume that continues bit for bit as if never stopped.

A run directory holds:
  checkpoint.safetensors   the latest state (weights, Adam's moments, step, settings, random state)
  best.safetensors         the state with the lowest held-out loss so far
  log.jsonl                one JSON object per logged step and per evaluation
"""
import hashlib
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, replace

from microgpt import atomic, checkpoint, engines, health
from microgpt.config import MODEL_FIELDS, PRESETS, REFERENCE_MODEL, TRAIN_FIELDS, TrainConfig
from microgpt.datasets import Dataset, read_text
from microgpt.errors import UserError
from microgpt.loading import check_shapes, read
from microgpt.progress import Progress
from microgpt.sampling import generate, stream_start
from microgpt.schedule import learning_rate

EVAL_BATCH = 64  # held-out sequences per forward pass


@dataclass(frozen=True)
class RunSettings:
    """Everything that decides the numbers a run computes (a resume must not change any of it), and
    the few things that do not (engine, how often to evaluate and log)."""
    data: str = "names"
    format: str = None  # lines | stream | None: detect
    model: dict = field(default_factory=lambda: dict(REFERENCE_MODEL))
    train: TrainConfig = field(default_factory=TrainConfig)
    dtype: str = "float64"
    tokenizer: str = "char"  # char | bpe
    vocab_size: int = 512  # for bpe: 256 bytes + merges + BOS
    presplit: bool = True  # for bpe: no merge across words (microgpt/bpe.py)
    engine: str = None  # None: the fastest installed
    engine_options: dict = field(default_factory=dict)  # the torch engine's device, attention, compile
    eval_every: int = 100
    eval_windows: int = 256  # held-out windows of a stream at intermediate evaluations (all at the end)
    log_every: int = 100
    health: bool = False  # print a health line at every logged step (it is always in the log)

    def fixed(self):
        """The settings a resumed run must share with the run it continues, as plain data."""
        return {"data": self.data, "format": self.format, "model": self.model, "train": asdict(self.train),
                "dtype": self.dtype, "tokenizer": self.tokenizer, "vocab_size": self.vocab_size,
                "presplit": self.presplit}

    def tokenizer_spec(self):
        return ("char",) if self.tokenizer == "char" else ("bpe", self.vocab_size, self.presplit)


class Trainer:
    def __init__(self, settings, out_dir, stream=sys.stdout, resume_from=None):
        self.settings, self.out_dir, self.stream = settings, out_dir, stream
        tc = settings.train
        self.rng = random.Random(tc.seed)  # the reference's one stream: shuffle, weights, samples
        self.data = Dataset(settings.data, settings.format, self.rng, settings.tokenizer_spec())
        self.data.check(settings.model["block_size"])
        self.cfg = atomic.GPTConfig(vocab_size=self.data.tokenizer.vocab_size, **settings.model)
        weights = atomic.init_weights(self.cfg, self.rng, tc.init_std)
        self.engine = engines.create(settings.engine or engines.fastest(), self.cfg, weights, settings.dtype,
                                     **settings.engine_options)
        # under torchrun only rank 0 writes: the progress, the log and the checkpoints
        self.is_main = getattr(self.engine, "rank", 0) == 0
        if not self.is_main:
            self.stream = open(os.devnull, "w")  # lives as long as the trainer
        try:  # find out now, not after an hour of training, if the run directory cannot be written
            os.makedirs(out_dir, exist_ok=True)
            with open(os.path.join(out_dir, "log.jsonl"), "a"):
                pass
        except OSError as e:
            raise UserError(f"cannot write the run directory {out_dir}: {e.strerror}; choose another --out") from None
        self.step, self.best, self.smoothed = 0, math.inf, None
        if resume_from:
            tensors, meta = resume_from
            check_shapes(tensors, self.cfg, os.path.join(out_dir, "checkpoint.safetensors"))
            self.engine.load_state({name: values for name, (shape, values) in tensors.items()})
            self.step, self.best, self.smoothed = meta["step"], meta["best_held_out"], meta["smoothed"]
            self.rng.setstate(to_state(meta["rng"]))
        self.interrupted = 0.0  # when Ctrl-C (or SIGTERM) came, at any moment; 0 until then
        self.monitor = health.Monitor()
        self.stop_requested = False  # decided between steps (by every rank together, under torchrun)
        self.last_saved_step = self.step if resume_from else None

    # -- checkpoints and logs ----------------------------------------------------------------------------

    def save(self, name="checkpoint.safetensors"):
        path = os.path.join(self.out_dir, name)
        if not self.is_main:
            return path
        state = self.engine.export_state()
        shapes = atomic.param_shapes(self.cfg)
        tensors = {key: (shapes[key.split(".", 2)[-1] if key.startswith("adam.") else key], values)
                   for key, values in state.items()}
        metadata = {"settings": self.settings.fixed(), "vocab_size": self.cfg.vocab_size,
                    "tokenizer": self.data.tokenizer.to_metadata(), "data_sha256": self.data.sha256,
                    "data_format": self.data.format,
                    "step": self.step, "best_held_out": self.best, "smoothed": self.smoothed,
                    "rng": self.rng.getstate(), "engine": self.engine.name, "eval_every": self.settings.eval_every,
                    "engine_options": self.settings.engine_options}
        checkpoint.save(path, tensors, metadata, dtype="F32" if self.settings.dtype == "float32" else "F64")
        if name == "checkpoint.safetensors":
            self.last_saved_step = self.step
        return path

    def log(self, record):
        if not self.is_main:
            return
        with open(os.path.join(self.out_dir, "log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")

    # -- evaluation --------------------------------------------------------------------------------------

    def held_out_loss(self, final=False):
        """Total negative log-likelihood over held-out tokens / their number (all of them at the end)."""
        bs = self.cfg.block_size
        batches = self.data.held_out_batches(bs, EVAL_BATCH, None if final else self.settings.eval_windows)
        total = count = 0
        for batch in batches:
            n = engines.predicted_tokens(batch, bs)
            total += self.engine.loss(batch) * n
            count += n
        return total / count

    # -- the loop ----------------------------------------------------------------------------------------

    def run(self):
        """Train to the last step (or until Ctrl-C), evaluating and saving on the way."""
        s, tc, w = self.settings, self.settings.train, self.stream
        progress = Progress(tc.steps, w, s.log_every, first=self.step + 1, mfu=getattr(self.engine, "mfu", None))
        # Ctrl-C, and SIGTERM (a scheduler's or torchrun's way to stop a run), finish the step and save
        previous = {sig: signal.signal(sig, self._interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.step < tc.steps and not self._stopping():
                self._step(progress)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        path = os.path.join(self.out_dir, "checkpoint.safetensors")
        if self.stop_requested:  # (a finished run saved at its final evaluation)
            self.save()
            world = int(os.environ.get("WORLD_SIZE", "1"))
            launcher = f"torchrun --nproc_per_node={world}" if world > 1 else "python"
            w.write(f"interrupted after step {self.step}; saved {path}\n"
                    f"resume with: {launcher} -m microgpt train --resume {self.out_dir}\n")
        return path

    def _stopping(self):
        """Whether to stop before the next step; under torchrun every rank must agree on the same step."""
        if hasattr(self.engine, "should_stop"):
            self.stop_requested = self.engine.should_stop(bool(self.interrupted))
        else:
            self.stop_requested = bool(self.interrupted)
        return self.stop_requested

    def _interrupt(self, signum, frame):
        # A second Ctrl-C, pressed by a person, stops at once without saving. Copies of the first that
        # arrive together (under torchrun the terminal's and torchrun's own) must not count as one.
        if self.interrupted:
            if signum == signal.SIGINT and time.monotonic() - self.interrupted > 1.0:
                raise KeyboardInterrupt
            return
        self.interrupted = time.monotonic()
        self.stream.write("\nCtrl-C: finishing this step, then saving (Ctrl-C again to quit at once)\n")

    def _step(self, progress):
        s, tc = self.settings, self.settings.train
        started = time.perf_counter()
        logged = (self.step + 1) % s.log_every == 0 or self.step + 1 == tc.steps
        batch = self.data.batch(self.step, tc.batch_size, self.cfg.block_size, tc.seed)
        loss = self.engine.loss_and_grads(batch)
        if not math.isfinite(loss):
            raise TrainingDiverged(self.step + 1, loss, self.out_dir, self.last_saved_step, self._non_finite(batch))
        snapshot_started = time.perf_counter()
        snapshot = (self.engine.grad_dict(), self.engine.export_state()) if logged else None  # for health
        snapshot_seconds = time.perf_counter() - snapshot_started
        grad_norm = self.engine.clip_grads(tc.grad_clip) if tc.grad_clip else None
        lr = learning_rate(self.step, tc)
        self.engine.adam_step(self.step, lr, tc.beta1, tc.beta2, tc.eps, tc.weight_decay)
        self.step += 1
        seconds = time.perf_counter() - started - snapshot_seconds
        tokens = engines.predicted_tokens(batch, self.cfg.block_size)
        self.smoothed = loss if self.smoothed is None else 0.9 * self.smoothed + 0.1 * loss
        progress.update(self.step, loss, tokens, seconds)
        if logged:
            self.log({"step": self.step, "train_loss": loss, "train_loss_smooth": self.smoothed, "lr": lr,
                      "grad_norm": grad_norm, "ms_per_step": 1000 * seconds, "tokens_per_s": tokens / seconds,
                      "health": self._health(batch, *snapshot)})
        if self.step % s.eval_every == 0 or self.step == tc.steps:
            self._evaluate(final=self.step == tc.steps)

    def _health(self, batch, grads, before):
        """The health record of the step just taken (microgpt/health.py), its warnings printed."""
        tensors = health.tensor_stats(before, self.engine.export_state(), grads)
        total = math.sqrt(sum(t["grad_norm"] ** 2 for t in tensors.values()))
        record = self.engine.trace(batch[0][:self.cfg.block_size]) if hasattr(self.engine, "trace") else None
        layers = health.layer_stats(record, self.cfg.n_layer) if record else None
        warnings = self.monitor.warnings(self.step, total, record, self.cfg.n_layer)
        for line in warnings:
            self.stream.write(line + "\n")
        if self.settings.health:
            worst = max(tensors, key=lambda name: tensors[name]["update_ratio"])
            line = (f"  health: gradient norm {total:.3g}; largest update/weight "
                    f"{tensors[worst]['update_ratio']:.2e} ({worst})")
            if layers:
                line += ("; per layer activation rms " + ", ".join(f"{x['activation_rms']:.2f}" for x in layers)
                         + ", dead relu " + ", ".join(f"{x['dead_relu']:.0%}" for x in layers))
            self.stream.write(line + "\n")
        return {"grad_norm": total, "tensors": tensors, "layers": layers, "warnings": warnings}

    def _non_finite(self, batch):
        """Where the first value that is not finite appears in the forward pass of the batch's first sequence."""
        if not hasattr(self.engine, "trace"):
            return None
        return health.first_non_finite(self.engine.trace(batch[0][:self.cfg.block_size]))

    def _evaluate(self, final):
        held_out = self.held_out_loss(final)
        note = ""
        if held_out < self.best:
            self.best = held_out
            note = f"; best so far, saved {self.save('best.safetensors')}"
        self.save()
        scope = "all held-out tokens" if final or self.data.format == "lines" else "held-out sample"
        self.stream.write(f"step {self.step}: held-out loss {held_out:.4f} ({scope}){note}\n")
        self.log({"step": self.step, "held_out_loss": held_out, "held_out_scope": scope})

    def samples(self, num_samples, temperature):
        """Samples in the reference's way (the run's random stream continues): documents from BOS,
        streams from a newline."""
        tok, out = self.data.tokenizer, []
        if self.data.format == "lines":
            prompt, stop, length = [tok.bos], tok.bos, self.cfg.block_size
        else:
            prompt, stop, length = stream_start(tok), None, 300
        for _ in range(num_samples):
            out.append(tok.decode(generate(self.engine, prompt, self.rng, length, self.cfg.block_size,
                                           temperature, stop=stop)))
        return out


class TrainingDiverged(UserError):
    exit_code = 1  # not a mistake in the command: the run itself went wrong

    def __init__(self, step, loss, out_dir, saved_step, where=None):
        saved = os.path.join(out_dir, "checkpoint.safetensors")
        kept = f"the last good checkpoint is {saved} (step {saved_step})" if saved_step is not None \
            else "no checkpoint was saved yet"
        first = f" (it first appears in {where})" if where else ""
        super().__init__(f"training diverged: the loss is {loss} at step {step}{first}; {kept}; "
                         "lower --lr, add --warmup or set --grad-clip 1")


def to_state(value):
    """random.getstate() after a trip through JSON (lists back to tuples)."""
    return tuple(to_state(v) for v in value) if isinstance(value, list) else value


# -- the `train` command ---------------------------------------------------------------------------------


def given(args, names):
    """The options among `names` that the user gave (argparse leaves the others None)."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def engine_options(args):
    return {"device": args.device, "attention": args.attention, "compile": args.compile}


def check_launch(settings):
    """Under torchrun (WORLD_SIZE > 1) only the torch engine can share the work between processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and settings.engine != "torch":
        raise UserError(f"started by torchrun with {world} processes, but only the torch engine trains on several; "
                        "add --engine torch")
    if world > 1 and settings.train.batch_size < world:
        raise UserError(f"--batch-size {settings.train.batch_size} gives some of the {world} processes nothing "
                        f"to do; use a batch of at least {world}")


def tokenizer_options(args):
    options = given(args, ("tokenizer", "vocab_size"))
    if args.bpe_split:
        options["presplit"] = args.bpe_split == "words"
    return options


def settings_from_args(args):
    """A preset (the reference unless --preset) with every option the user gave laid over it."""
    preset = PRESETS[args.preset or "reference"]
    model = {**preset["model"], **given(args, MODEL_FIELDS)}
    settings = RunSettings(data=args.data or preset["data"], format=args.format, model=model,
                           train=replace(preset["train"], **given(args, TRAIN_FIELDS)),
                           dtype=args.dtype or preset.get("dtype", "float64"), engine=args.engine,
                           engine_options=engine_options(args), **tokenizer_options(args),
                           eval_every=args.eval_every or preset["eval_every"], log_every=args.log_every,
                           health=args.health)
    if (args.vocab_size or args.bpe_split) and settings.tokenizer != "bpe":
        raise UserError("--vocab-size and --bpe-split are options of the BPE tokenizer; add --tokenizer bpe")
    if model["n_embd"] % model["n_head"]:
        raise UserError(f"--n-embd {model['n_embd']} is not divisible by --n-head {model['n_head']}; "
                        "choose n_embd = n_head * head_dim")
    if settings.train.warmup >= settings.train.steps:
        raise UserError(f"--warmup {settings.train.warmup} leaves no step after it (--steps "
                        f"{settings.train.steps}); use a shorter warmup")
    return settings


def resume_settings(args):
    """The settings and state saved in --resume DIR; an option that would change them is an error."""
    if args.out:
        raise UserError(f"--resume {args.resume} continues in its own directory; drop --out {args.out}")
    tensors, meta = read(os.path.join(args.resume, "checkpoint.safetensors"))
    saved = meta["settings"]
    if hashlib.sha256(read_text(saved["data"])[1].encode()).hexdigest() != meta["data_sha256"]:
        raise UserError(f"--data {saved['data']} has changed since this run started (its checksum differs); "
                        "restore the original file, or start a new run")
    settings = RunSettings(data=saved["data"], format=saved["format"], model=saved["model"],
                           train=TrainConfig(**saved["train"]), dtype=saved["dtype"], tokenizer=saved["tokenizer"],
                           vocab_size=saved["vocab_size"], presplit=saved["presplit"],
                           engine=args.engine or meta["engine"],  # by default, the engine it was trained on
                           engine_options={**meta["engine_options"], **given(args, ("device", "attention")),
                                           "compile": args.compile or meta["engine_options"]["compile"]},
                           eval_every=args.eval_every or meta["eval_every"], log_every=args.log_every,
                           health=args.health)
    asked = {**given(args, ("data", "format", "dtype")), **tokenizer_options(args), **given(args, MODEL_FIELDS),
             **given(args, TRAIN_FIELDS)}
    have = {**saved, "format": meta["data_format"], **saved["model"], **saved["train"]}
    conflicts = [f"--{key.replace('_', '-')} {value} (the run has {have[key]})"
                 for key, value in asked.items() if value != have[key]]
    if args.preset:
        conflicts.append(f"--preset {args.preset} (a resumed run keeps its own settings)")
    if conflicts:
        raise UserError(f"--resume {args.resume}: the run was trained with other settings: {'; '.join(conflicts)}; "
                        "drop those options, or start a new run with --out")
    return settings, (tensors, meta)


def choose_out_dir(args, settings):
    """--out, or runs/<data>, runs/<data>-2, ...: the first that holds no run yet. Never overwrites a run."""
    if args.out:
        if os.path.exists(os.path.join(args.out, "checkpoint.safetensors")):
            raise UserError(f"--out {args.out} already holds a run; continue it with --resume {args.out} "
                            "or choose another --out")
        return args.out
    base = os.path.join("runs", os.path.splitext(os.path.basename(settings.data))[0])
    out, n = base, 2
    while os.path.exists(out) and os.listdir(out):
        out, n = f"{base}-{n}", n + 1
    return out


def train_command(args):
    if args.resume:
        settings, state = resume_settings(args)
        out_dir = args.resume
    else:
        settings, state = settings_from_args(args), None
        out_dir = choose_out_dir(args, settings)
    check_launch(settings)
    trainer = Trainer(settings, out_dir, resume_from=state)
    w, cfg, tc = trainer.stream, trainer.cfg, settings.train
    n_params = sum(rows * cols for rows, cols in atomic.param_shapes(cfg).values())
    w.write(f"data: {trainer.data.describe()}\n"
            f"model: n_layer {cfg.n_layer}, n_embd {cfg.n_embd}, n_head {cfg.n_head}, block_size "
            f"{cfg.block_size}: {n_params:,} parameters; engine {trainer.engine.name} ({settings.dtype})\n"
            f"training: {tc.steps} steps of batch {tc.batch_size}, lr {tc.lr} ({tc.schedule}"
            f"{f', warmup {tc.warmup}' if tc.warmup else ''}), weight decay {tc.weight_decay}, grad clip "
            f"{tc.grad_clip or 'off'}, seed {tc.seed}\n"
            f"run directory: {out_dir}" + (f" (resuming after step {trainer.step})" if state else "") + "\n")
    trainer.run()
    if trainer.stop_requested:
        return
    w.write(f"best held-out loss {trainer.best:.4f}; checkpoints in {out_dir}\n")
    if args.num_samples:
        w.write(f"samples (temperature {args.temperature}):\n")
        for i, text in enumerate(trainer.samples(args.num_samples, args.temperature)):
            w.write(f"{i + 1:3d}  {text}\n" if trainer.data.format == "lines" else f"--- {i + 1}\n{text}\n")

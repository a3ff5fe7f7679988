"""From the command line to a run's settings: the options of `train`; a preset with the options given laid over it,
or, for --resume, the settings saved in the run's checkpoint with a refusal of any option that would change them;
and the run directory.
"""
import math
import os
from dataclasses import replace

from microgpt import ablations
from microgpt.arguments import add_engine, number_in, positive_number, whole_number
from microgpt.config import (
    ATTENTIONS,
    DEVICES,
    DTYPES,
    MODEL_FIELDS,
    PRESETS,
    REFERENCE_MODEL,
    TRAIN_FIELDS,
    RunSettings,
    TrainConfig,
)
from microgpt.datasets import BOM, BUNDLED, FORMATS, checksum, read_text
from microgpt.errors import UserError
from microgpt.loading import read
from microgpt.schedule import SCHEDULES


def add_data_options(p):
    data = p.add_argument_group("data")
    data.add_argument("--data", metavar="NAME|PATH",
                      help=f"a bundled data set ({', '.join(BUNDLED)}) or a UTF-8 text file (default: names)")
    data.add_argument("--format", choices=FORMATS,
                      help="lines: one document per line; stream: one running text, trained on windows "
                           "(default: names are lines, shakespeare a stream, a file is detected and said)")
    data.add_argument("--tokenizer", choices=("char", "bpe"),
                      help="characters (the reference's) or byte-level BPE learned from the training data "
                           "(default: char)")
    data.add_argument("--vocab-size", type=whole_number(257), metavar="N",
                      help="BPE: 256 bytes + merges + BOS (default: 512)")
    data.add_argument("--bpe-split", choices=("words", "none"),
                      help="BPE: learn merges within words, digits and symbols, or across the whole text "
                           "(default: words)")


def add_model_options(p):
    model = p.add_argument_group("model")
    for flag, help_text in (("--n-layer", "transformer blocks"), ("--n-embd", "width of the residual stream"),
                            ("--n-head", "attention heads; must divide --n-embd"),
                            ("--block-size", "longest context, in tokens")):
        default = REFERENCE_MODEL[flag[2:].replace("-", "_")]
        model.add_argument(flag, type=whole_number(1), metavar="N", help=f"{help_text} (default: {default})")
    model.add_argument("--ablate", type=ablations.parse, metavar=f"{{{','.join(ablations.ABLATIONS)}}}[,...]",
                       help="train the model with pieces taken out, to see what each is for (default: none, the "
                            "full model):\n"
                            + "\n".join(f"{name}: {what}" for name, what in ablations.ABLATIONS.items()))


def add_engine_options(p):
    engine = p.add_argument_group("engine")
    engine.add_argument("--preset", choices=list(PRESETS),
                        help="data, model and training settings that were measured (README); default: reference")
    add_engine(engine, "what computes the model: all give the same numbers, at different speeds ")
    engine.add_argument("--dtype", choices=DTYPES,
                        help="float32 is about twice as fast (numpy, torch); bfloat16 is autocast on CUDA (torch); "
                             "float64 reproduces the reference (default: float64)")
    engine.add_argument("--device", choices=DEVICES,
                        help="torch engine: where to compute (default: cuda if present, else mps, else cpu)")
    engine.add_argument("--attention", choices=ATTENTIONS,
                        help="torch engine: attention spelled out, or F.scaled_dot_product_attention, the fused "
                             "kernel (default: manual)")
    engine.add_argument("--compile", action="store_true",
                        help="torch engine: torch.compile the model (batches padded to block_size)")


def add_training_options(p):
    d, training = TrainConfig(), p.add_argument_group("training")
    training.add_argument("--steps", type=whole_number(1), metavar="N", help=f"training steps (default: {d.steps})")
    training.add_argument("--batch-size", type=whole_number(1), metavar="B",
                          help="documents or windows per step; the loss is the mean over all their tokens "
                               f"(default: {d.batch_size})")
    training.add_argument("--lr", type=positive_number, metavar="LR", help=f"peak learning rate (default: {d.lr})")
    training.add_argument("--schedule", choices=SCHEDULES,
                          help=f"learning-rate decay after the warmup (default: {d.schedule}, the reference's)")
    training.add_argument("--warmup", type=whole_number(0), metavar="N",
                          help=f"steps of linear warmup (default: {d.warmup})")
    training.add_argument("--min-lr-ratio", type=number_in(0, 1, high_open=False), metavar="R",
                          help=f"where the cosine schedule ends, as a fraction of --lr (default: {d.min_lr_ratio})")
    training.add_argument("--weight-decay", type=number_in(0, 1), metavar="WD",
                          help=f"AdamW's decoupled weight decay (default: {d.weight_decay})")
    training.add_argument("--grad-clip", type=number_in(0, math.inf), metavar="NORM",
                          help=f"clip the gradient's global norm to this; 0 = off (default: {d.grad_clip})")
    training.add_argument("--beta1", type=number_in(0, 1), metavar="B1", help=f"Adam (default: {d.beta1})")
    training.add_argument("--beta2", type=number_in(0, 1), metavar="B2", help=f"Adam (default: {d.beta2})")
    training.add_argument("--seed", type=int, metavar="N", help=f"random seed (default: {d.seed})")
    training.add_argument("--init-std", type=positive_number, metavar="S",
                          help=f"standard deviation of the initial weights (default: {d.init_std})")
    training.add_argument("--dropout", type=number_in(0, 1), metavar="P",
                          help="in training, zero each activation of the embedding, the attention weights and the "
                               "blocks' outputs with probability P (python, numpy and torch engines; "
                               f"default: {d.dropout})")


def add_output_options(p):
    output = p.add_argument_group("evaluation and output")
    output.add_argument("--eval-every", type=whole_number(1), metavar="N",
                        help="held-out loss and a checkpoint every N steps "
                             f"(default: {PRESETS['reference']['eval_every']})")
    output.add_argument("--log-every", type=whole_number(1), default=100, metavar="N",
                        help="a progress line and a log record every N steps (default: 100)")
    output.add_argument("--health", action="store_true",
                        help="print gradient norm, update/weight, activation RMS and dead ReLUs at each logged "
                             "step (they are always in log.jsonl, and warnings always print)")
    output.add_argument("--out", metavar="DIR", help="the run directory (default: runs/DATA, or runs/DATA-2, ...)")
    output.add_argument("--resume", metavar="DIR", help="continue the run in DIR exactly where it left off")
    sampling = p.add_argument_group("sampling")
    sampling.add_argument("--num-samples", type=whole_number(0), default=20, metavar="N",
                          help="samples printed after training (default: 20)")
    sampling.add_argument("--temperature", type=positive_number, default=0.5, metavar="T",
                          help="below 1 sharpens the distribution, above 1 flattens it (default: 0.5)")


def add_train_options(p):
    for add in (add_data_options, add_model_options, add_engine_options, add_training_options, add_output_options):
        add(p)


def given(args, names):
    """The options among `names` that the user gave (argparse leaves the others None)."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def engine_options(args):
    return {"device": args.device, "attention": args.attention, "compile": args.compile}


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
                           health=args.health, ablate=args.ablate or ())
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
    """The settings and the checkpoint (tensors, metadata) saved in --resume DIR; an option that would change the
    run is an error."""
    if args.out:
        raise UserError(f"--resume {args.resume} continues in its own directory; drop --out {args.out}")
    tensors, meta, _ = read(os.path.join(args.resume, "checkpoint.safetensors"))
    saved = meta["settings"]
    text = read_text(saved["data"])[1]
    changed = checksum(text) != meta["data_sha256"]
    if changed and checksum(BOM + text) == meta["data_sha256"]:
        raise UserError(f"--resume {args.resume} was started by an older microgpt, which read the byte-order mark at "
                        f"the start of {saved['data']} as a character; this one drops it, so the run cannot continue "
                        "exactly; start a new run")
    if changed:
        raise UserError(f"--data {saved['data']} has changed since this run started (its checksum differs); "
                        "restore the original file, or start a new run")
    settings = RunSettings(data=saved["data"], format=saved["format"], model=saved["model"],
                           train=TrainConfig(**saved["train"]), dtype=saved["dtype"], tokenizer=saved["tokenizer"],
                           vocab_size=saved["vocab_size"], presplit=saved["presplit"],
                           engine=args.engine or meta["engine"],  # by default, the engine it was trained on
                           engine_options={**meta["engine_options"], **given(args, ("device", "attention")),
                                           "compile": args.compile or meta["engine_options"]["compile"]},
                           eval_every=args.eval_every or meta["eval_every"], log_every=args.log_every,
                           health=args.health, ablate=tuple(saved["ablate"]))
    asked = {**given(args, ("data", "format", "dtype")), **tokenizer_options(args), **given(args, MODEL_FIELDS),
             **given(args, TRAIN_FIELDS), **({"ablate": ablations.listed(args.ablate)} if args.ablate is not None
                                              else {})}
    have = {**saved, "format": meta["data_format"], **saved["model"], **saved["train"],
            "ablate": ablations.listed(saved["ablate"])}
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

"""The command line: `python -m microgpt COMMAND ...` (or `microgpt COMMAND ...` once installed).

Every command has --help. A mistake in the arguments or the input is reported as one line that
names the problem and the fix, with exit code 2, never a traceback."""
import argparse
import math
import os
import sys

from microgpt import __version__
from microgpt.engines import ENGINES
from microgpt.errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (argparse prints the whole usage first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def whole_number(minimum):
    """An argparse type: an int that is at least `minimum`."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def positive_number(text):
    """An argparse type: a finite float greater than zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number greater than 0, got {text}")
    return value


def number_in(low, high, low_open=False, high_open=True):
    """An argparse type: a float in the interval from low to high (open or closed at each end)."""
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not ((value > low if low_open else value >= low) and (value < high if high_open else value <= high)):
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {text}")
        return value
    return parse


def add_train_parser(commands):
    from microgpt.config import PRESETS, TrainConfig
    from microgpt.datasets import BUNDLED, FORMATS
    from microgpt.schedule import SCHEDULES

    ref, d = PRESETS["reference"], TrainConfig()
    p = commands.add_parser(
        "train", help="train a model, evaluate it on held-out data, save checkpoints, print samples",
        description="Train a GPT from scratch. With no options this is the reference run of "
                    "microgpt/atomic.py (same numbers, same 20 names), plus a held-out loss and a run "
                    "directory with checkpoints and a log. A preset sets everything at once; any option "
                    "given overrides it. Ctrl-C saves; --resume continues exactly.")
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
    model = p.add_argument_group("model")
    for flag, help_text in (("--n-layer", "transformer blocks"), ("--n-embd", "width of the residual stream"),
                            ("--n-head", "attention heads; must divide --n-embd"),
                            ("--block-size", "longest context, in tokens")):
        key = flag[2:].replace("-", "_")
        model.add_argument(flag, type=whole_number(1), metavar="N", help=f"{help_text} (default: {ref['model'][key]})")
    training = p.add_argument_group("training")
    training.add_argument("--preset", choices=list(PRESETS),
                          help="data, model and training settings that were measured (README); default: reference")
    training.add_argument("--engine", choices=ENGINES,
                          help="what computes the model: all give the same numbers, at different speeds "
                               "(default: the fastest installed)")
    training.add_argument("--dtype", choices=("float64", "float32", "bfloat16"),
                          help="float32 is about twice as fast (numpy, torch); bfloat16 is autocast on CUDA "
                               "(torch); float64 reproduces the reference (default: float64)")
    training.add_argument("--device", choices=("cpu", "cuda", "mps"),
                          help="torch engine: where to compute (default: cuda if present, else mps, else cpu)")
    training.add_argument("--attention", choices=("manual", "sdpa"),
                          help="torch engine: attention spelled out, or F.scaled_dot_product_attention, the "
                               "fused kernel (default: manual)")
    training.add_argument("--compile", action="store_true",
                          help="torch engine: torch.compile the model (batches padded to block_size)")
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
    output = p.add_argument_group("evaluation and output")
    output.add_argument("--eval-every", type=whole_number(1), metavar="N",
                        help=f"held-out loss and a checkpoint every N steps (default: {ref['eval_every']})")
    output.add_argument("--log-every", type=whole_number(1), default=100, metavar="N",
                        help="a progress line and a log record every N steps (default: 100)")
    output.add_argument("--health", action="store_true",
                        help="print gradient norm, update/weight, activation RMS and dead ReLUs at each logged "
                             "step (they are always in log.jsonl, and warnings always print)")
    output.add_argument("--out", metavar="DIR",
                        help="the run directory (default: runs/DATA, or runs/DATA-2, ... if taken)")
    output.add_argument("--resume", metavar="DIR",
                        help="continue the run in DIR exactly where its checkpoint left off")
    sampling = p.add_argument_group("sampling")
    sampling.add_argument("--num-samples", type=whole_number(0), default=20, metavar="N",
                          help="samples printed after training (default: 20)")
    sampling.add_argument("--temperature", type=positive_number, default=0.5, metavar="T",
                          help="below 1 sharpens the distribution, above 1 flattens it (default: 0.5)")
    p.set_defaults(run=run_train, command_parser=p)


def run_train(args):
    from microgpt.train import train_command

    train_command(args)


def add_sample_parser(commands):
    p = commands.add_parser(
        "sample", help="generate text from a trained model",
        description="Generate text from a run directory (its best checkpoint) or a checkpoint file. For "
                    "documents (lines) each sample starts after BOS and ends at BOS; a sample that only "
                    "repeats a training document is marked.")
    p.add_argument("--from", dest="source", required=True, metavar="DIR|FILE",
                   help="a run directory (train --out) or a .safetensors checkpoint")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="in a run directory: the best held-out checkpoint or the latest (default: best)")
    p.add_argument("--prompt", default="", metavar="TEXT", help="the text every sample starts with (default: none)")
    p.add_argument("--num-samples", type=whole_number(1), default=10, metavar="N", help="(default: 10)")
    p.add_argument("--max-new-tokens", type=whole_number(1), metavar="N",
                   help="(default: up to the block for documents, 500 for a stream)")
    p.add_argument("--temperature", type=number_in(0, math.inf), default=0.8, metavar="T",
                   help="0 takes the most likely token; below 1 sharpens, above 1 flattens (default: 0.8)")
    p.add_argument("--top-k", type=whole_number(0), default=0, metavar="K",
                   help="draw only from the K most likely tokens; 0 = all (default: 0)")
    p.add_argument("--top-p", type=number_in(0, 1, low_open=True, high_open=False), default=1.0, metavar="P",
                   help="draw only from the most likely tokens that hold P of the probability (default: 1)")
    p.add_argument("--seed", type=int, default=42, metavar="N", help="random seed (default: 42)")
    p.add_argument("--engine", choices=ENGINES, help="(default: the fastest installed)")
    p.set_defaults(run=run_sample, command_parser=p)


def run_sample(args):
    from microgpt.sampling import sample_command

    sample_command(args)


def add_tokenize_parser(commands):
    p = commands.add_parser(
        "tokenize", help="show how a trained model's tokenizer cuts a text",
        description="Print the tokens of TEXT under the tokenizer saved with a run (ids and what each "
                    "stands for), and the bytes per token; --save writes the tokenizer as a text file.")
    p.add_argument("--from", dest="source", required=True, metavar="DIR|FILE",
                   help="a run directory or a checkpoint")
    p.add_argument("text", nargs="?", default="", metavar="TEXT", help="the text to cut into tokens")
    p.add_argument("--save", metavar="PATH", help="also write the tokenizer to PATH (a versioned text file)")
    p.set_defaults(run=run_tokenize, command_parser=p)


def run_tokenize(args):
    from microgpt.loading import checkpoint_path, read
    from microgpt.tokenizer import from_metadata

    path = checkpoint_path(args.source)
    tok = from_metadata(read(path)[1]["tokenizer"])
    ids = tok.encode(args.text)
    n_bytes = len(args.text.encode())
    print(f"{path}: {tok.kind} tokenizer, vocab size {tok.vocab_size}; {len(ids)} tokens for {n_bytes} bytes"
          + (f" ({n_bytes / len(ids):.2f} bytes per token)" if ids else ""))
    for i in ids:
        raw = tok.token_bytes(i)
        try:
            shown = repr(raw.decode())
        except UnicodeDecodeError:  # part of a character: show the bytes
            shown = repr(raw)
        print(f"{i:6d}  {shown}")
    if args.save:
        try:
            tok.save(args.save)
        except OSError as e:
            raise UserError(f"cannot write {args.save}: {e.strerror}; choose another --save path") from None
        print(f"saved the tokenizer to {args.save}")


def add_inspection_parsers(commands):
    from microgpt import trace

    for name, help_text, description, run in (
            ("trace", "print every intermediate value of one forward pass",
             "One forward pass over a prompt, printing every intermediate in order, named the same on "
             "every engine, with shapes and values (rounded, wide rows cut).", trace.trace_command),
            ("attention", "draw each head's attention weights as a heat map",
             "Per layer and head, the attention weights of one forward pass over a prompt: rows are "
             "query positions, columns the key positions, darker is more weight.", trace.attention_command)):
        p = commands.add_parser(name, help=help_text, description=description)
        p.add_argument("--prompt", default="", metavar="TEXT",
                       help="the text to look at (documents: it follows BOS; default: BOS alone)")
        p.add_argument("--from", dest="source", metavar="DIR|FILE",
                       help="a run directory or a checkpoint (default: a fresh model, the reference's "
                            "initialisation on names)")
        p.add_argument("--engine", choices=ENGINES, help="(default: the fastest installed)")
        if name == "trace":
            p.add_argument("--json", action="store_true", help="one JSON object instead of text")
            p.add_argument("--columns", type=whole_number(1), default=8, metavar="N",
                           help="values shown per row (default: 8)")
        p.set_defaults(run=run, command_parser=p)


def add_check_parser(commands):
    from microgpt.check import check_command

    p = commands.add_parser(
        "check", help="prove every engine computes the reference's numbers, here",
        description="The scalar reference's gradient against finite differences, then every installed "
                    "engine against the scalar reference from identical weights (logits, loss, every "
                    "gradient tensor, 20 Adam steps), with tolerances; exit code 1 on any FAIL.")
    p.add_argument("--from", dest="source", metavar="DIR|FILE",
                   help="check a trained model (default: a fresh model of the reference's size)")
    p.add_argument("--per-tensor", type=whole_number(1), default=4, metavar="N",
                   help="weights per tensor checked by finite differences (default: 4)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="which weights and documents (default: 0)")
    p.set_defaults(run=check_command, command_parser=p)


def add_report_parser(commands):
    from microgpt.report import report_command

    p = commands.add_parser(
        "report", help="write one self-contained HTML page about a run",
        description="Loss curves, training health, attention maps, samples, settings and machine of a run, "
                    "as one HTML file with inline SVG (no JavaScript, nothing from a network).")
    p.add_argument("--from", dest="source", required=True, metavar="DIR", help="a run directory")
    p.add_argument("--out", metavar="FILE", help="where to write it (default: DIR/report.html)")
    p.add_argument("--prompt", metavar="TEXT", help="the text whose attention is drawn (default: emma / ROMEO:)")
    p.add_argument("--engine", choices=ENGINES, help="(default: the fastest installed)")
    p.set_defaults(run=report_command, command_parser=p)


def add_bench_parser(commands):
    from microgpt.bench import CONFIGS

    p = commands.add_parser(
        "bench", help="time every installed engine side by side",
        description="Train every installed engine on the same documents of the reference run, in "
                    "interleaved rounds, and print the median ms/step, steps/s, tokens/s and the speed-up "
                    "over the scalar engine (the atomic file). If pypy3 is on PATH, the python engine "
                    "also runs under PyPy.")
    p.add_argument("--config", action="append", choices=list(CONFIGS),
                   help="model sizes to time; repeat for several (default: all)")
    p.add_argument("--rounds", type=whole_number(1), default=5, metavar="N",
                   help="interleaved rounds; the median is reported (default: 5)")
    p.add_argument("--min-time", type=positive_number, default=0.3, metavar="S",
                   help="seconds each engine trains per round, at least (default: 0.3)")
    p.add_argument("--no-pypy", action="store_true", help="skip PyPy even if pypy3 is on PATH")
    p.set_defaults(run=run_bench, command_parser=p)


def run_bench(args):
    from microgpt.bench import CONFIGS, bench

    bench(args.config or list(CONFIGS), args.rounds, args.min_time, use_pypy=not args.no_pypy)


def build_parser():
    parser = Parser(prog="microgpt", description="A GPT in plain Python, and the tools to understand it.")
    parser.add_argument("--version", action="version", version=f"microgpt {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    add_train_parser(commands)
    add_sample_parser(commands)
    add_tokenize_parser(commands)
    add_inspection_parsers(commands)
    add_check_parser(commands)
    add_report_parser(commands)
    add_bench_parser(commands)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.run(args)
    except UserError as e:
        sys.stderr.write(f"{parser.prog}: error: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"{parser.prog}: interrupted\n")
        return 130
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return code or 0

"""The command line: `python -m microgpt COMMAND ...` (or `microgpt COMMAND ...` once installed).

Every command has --help. A mistake in the arguments or the input is reported as one line that
names the problem and the fix, with exit code 2, never a traceback."""
import argparse
import os
import sys

from microgpt import __version__
from microgpt.engines import ENGINES, fastest
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


def add_train_parser(commands):
    p = commands.add_parser(
        "train", help="train a model and print samples",
        description="Train a GPT from scratch, one document per step, showing progress, and print "
                    "samples at the end. The defaults are the reference run of microgpt/atomic.py: "
                    "same seed, same numbers, same 20 names.")
    data = p.add_argument_group("data")
    data.add_argument("--data", default="names", metavar="NAME|PATH",
                      help="a bundled data set (names, shakespeare) or a UTF-8 text file, one "
                           "document per line (default: names)")
    model = p.add_argument_group("model")
    model.add_argument("--n-layer", type=whole_number(1), default=1, metavar="N",
                       help="transformer blocks (default: 1)")
    model.add_argument("--n-embd", type=whole_number(1), default=16, metavar="N",
                       help="width of the residual stream (default: 16)")
    model.add_argument("--n-head", type=whole_number(1), default=4, metavar="N",
                       help="attention heads; must divide --n-embd (default: 4)")
    model.add_argument("--block-size", type=whole_number(1), default=16, metavar="N",
                       help="longest context, in tokens (default: 16)")
    training = p.add_argument_group("training")
    training.add_argument("--engine", choices=ENGINES, default=None,
                          help="what computes the model: all give the same numbers, at different speeds "
                               "(default: the fastest installed)")
    training.add_argument("--steps", type=whole_number(1), default=1000, metavar="N",
                          help="training steps (default: 1000)")
    training.add_argument("--batch-size", type=whole_number(1), default=1, metavar="B",
                          help="documents per step; the loss is the mean over all their tokens (default: 1)")
    training.add_argument("--seed", type=int, default=42, metavar="N", help="random seed (default: 42)")
    sampling = p.add_argument_group("sampling")
    sampling.add_argument("--num-samples", type=whole_number(0), default=20, metavar="N",
                          help="samples printed after training (default: 20)")
    sampling.add_argument("--temperature", type=positive_number, default=0.5, metavar="T",
                          help="below 1 sharpens the distribution, above 1 flattens it (default: 0.5)")
    output = p.add_argument_group("output")
    output.add_argument("--log-every", type=whole_number(1), default=100, metavar="N",
                        help="keep a progress line every N steps (default: 100)")
    p.set_defaults(run=run_train, command_parser=p)


def run_train(args):
    from microgpt.datasets import read_docs
    from microgpt.train import train

    if args.n_embd % args.n_head:
        args.command_parser.error(f"--n-embd {args.n_embd} is not divisible by --n-head {args.n_head}; "
                                  "choose n_embd = n_head * head_dim")
    model = {name: getattr(args, name) for name in ("n_layer", "n_embd", "n_head", "block_size")}
    train(read_docs(args.data), model, args.steps, args.seed, args.engine or fastest(), args.batch_size,
          args.num_samples, args.temperature, args.log_every)


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
    add_bench_parser(commands)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except UserError as e:
        sys.stderr.write(f"{parser.prog}: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{parser.prog}: interrupted\n")
        return 130
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0

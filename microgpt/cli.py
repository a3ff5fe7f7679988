"""The command line: `python -m microgpt COMMAND ...` (or `microgpt COMMAND ...` once installed).

Every command is wired the same way: a row of COMMANDS gives its help, its options and the function that runs it,
which is imported only when the command runs (so --help never waits for NumPy or PyTorch). Every command has
--help. A mistake in the arguments or the input is reported as one line that names the problem and the fix, with
exit code 2, never a traceback."""
import argparse
import importlib
import math
import os
import sys

from microgpt import __version__
from microgpt.arguments import Formatter, add_engine, add_prompt, add_source, number_in, positive_number, whole_number
from microgpt.errors import UserError
from microgpt.settings import add_train_options
from microgpt.signals import Stopped, stopping_at_once


class Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (argparse prints the whole usage first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_sample_options(p):
    add_source(p)
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="in a run directory: the best held-out checkpoint or the latest (default: best)")
    add_prompt(p, "the text every sample starts with (default: none)")
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
    add_engine(p)


def add_evaluate_options(p):
    add_source(p)
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="in a run directory: the best held-out checkpoint or the latest (default: best)")
    p.add_argument("--data", metavar="FILE", help="a text file to evaluate on, read in the run's format "
                   "(default: the run's held-out part)")
    add_engine(p)


def add_tokenize_options(p):
    add_source(p)
    p.add_argument("text", nargs="?", default="", metavar="TEXT", help="the text to cut into tokens")
    p.add_argument("--save", metavar="PATH", help="also write the tokenizer to PATH (a versioned text file)")


def add_inspection_options(p, trace=False):
    add_prompt(p, "the text to look at (documents: it follows BOS; default: BOS alone)")
    add_source(p, required=False, what="a run directory or a checkpoint (default: a fresh model, the reference's "
                                       "initialisation on names)")
    add_engine(p)
    if trace:
        p.add_argument("--json", action="store_true", help="one JSON object instead of text")
        p.add_argument("--columns", type=whole_number(1), default=8, metavar="N", help="values per row (default: 8)")


def add_check_options(p):
    add_source(p, required=False, what="check a trained model (default: a fresh model of the reference's size)")
    p.add_argument("--per-tensor", type=whole_number(1), default=4, metavar="N",
                   help="weights per tensor checked by finite differences (default: 4)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="which weights and documents (default: 0)")


def add_report_options(p):
    add_source(p, what="a run directory")
    p.add_argument("--out", metavar="FILE", help="where to write it (default: DIR/report.html)")
    p.add_argument("--prompt", metavar="TEXT", help="the text whose attention is drawn (default: emma / ROMEO:)")
    add_engine(p)


def add_compare_options(p):
    p.add_argument("runs", nargs="+", metavar="DIR", help="run directories (train --out), two or more")
    p.add_argument("--out", default="compare.html", metavar="FILE", help="where to write the page "
                   "(default: compare.html)")


def add_bench_options(p):
    from microgpt.bench import CONFIGS

    p.add_argument("--config", action="append", choices=list(CONFIGS),
                   help="model sizes to time; repeat for several (default: all)")
    p.add_argument("--rounds", type=whole_number(1), default=5, metavar="N",
                   help="interleaved rounds; the median is reported (default: 5)")
    p.add_argument("--min-time", type=positive_number, default=0.3, metavar="S",
                   help="seconds each engine trains per round, at least (default: 0.3)")
    p.add_argument("--no-pypy", action="store_true", help="skip PyPy even if pypy3 is on PATH")


COMMANDS = {  # name: (help, description, options, the function that runs it)
    "train": ("train a model, evaluate it on held-out data, save checkpoints, print samples",
              "Train a GPT from scratch. With no options this is the reference run of microgpt/atomic.py (same "
              "numbers, same 20 names), plus a held-out loss and a run directory with checkpoints and a log. A "
              "preset sets everything at once; any option given overrides it. Ctrl-C saves; --resume continues "
              "exactly.", add_train_options, "microgpt.train:train_command"),
    "sample": ("generate text from a trained model",
               "Generate text from a run directory (its best checkpoint) or a checkpoint file. For documents (lines) "
               "each sample starts after BOS and ends at BOS; a sample that only repeats a training document is "
               "marked.", add_sample_options, "microgpt.sampling:sample_command"),
    "evaluate": ("the loss of a trained model on its held-out part, or on any text file",
                 "The mean loss over every predicted token: of the run's held-out part, as train's final evaluation "
                 "computes it, or of a text file (--data) read in the run's format; per token and per character, "
                 "with the tokens counted. Every engine gives the same number.", add_evaluate_options,
                 "microgpt.evaluation:evaluate_command"),
    "tokenize": ("show how a trained model's tokenizer cuts a text",
                 "Print the tokens of TEXT under the tokenizer saved with a run (ids and what each stands for), and "
                 "the bytes per token; --save writes the tokenizer as a text file.", add_tokenize_options,
                 "microgpt.tokens:tokenize_command"),
    "trace": ("print every intermediate value of one forward pass",
              "One forward pass over a prompt, printing every intermediate in order, named the same on every "
              "engine, with shapes and values (rounded, wide rows cut).",
              lambda p: add_inspection_options(p, trace=True), "microgpt.trace:trace_command"),
    "attention": ("draw each head's attention weights as a heat map",
                  "Per layer and head, the attention weights of one forward pass over a prompt: rows are query "
                  "positions, columns the key positions, darker is more weight.", add_inspection_options,
                  "microgpt.trace:attention_command"),
    "check": ("prove every engine computes the reference's numbers, here",
              "The scalar reference's gradient against finite differences, then every installed engine against the "
              "scalar reference from identical weights (logits, loss, every gradient tensor, 20 Adam steps), with "
              "tolerances; exit code 1 on any FAIL. A model trained with --ablate is held to the python engine.",
              add_check_options, "microgpt.check:check_command"),
    "report": ("write one self-contained HTML page about a run",
               "Loss curves, training health, attention maps, samples, settings and machine of a run, as one HTML "
               "file with inline SVG (no JavaScript, nothing from a network).", add_report_options,
               "microgpt.report:report_command"),
    "compare": ("runs side by side: what differs, their losses, curves overlaid",
                "A table of the runs in the terminal (the settings that differ, best held-out loss and its difference "
                "from the first run's, steps, wall time) and one self-contained HTML page with the same table and "
                "the runs' loss, gradient-norm and dead-ReLU curves overlaid.", add_compare_options,
                "microgpt.compare:compare_command"),
    "bench": ("time every installed engine side by side",
              "Train every installed engine on the same documents of the reference run, in interleaved rounds, and "
              "print the median ms/step, steps/s, tokens/s and the speed-up over the scalar engine (the atomic "
              "file). If pypy3 is on PATH, the python engine also runs under PyPy.", add_bench_options,
              "microgpt.bench:bench_command"),
}


def build_parser():
    parser = Parser(prog="microgpt", description="A GPT in plain Python, and the tools to understand it.")
    parser.add_argument("--version", action="version", version=f"microgpt {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name, (help_text, description, add_options, target) in COMMANDS.items():
        p = commands.add_parser(name, help=help_text, description=description, formatter_class=Formatter)
        add_options(p)
        p.set_defaults(target=target)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    module, function = args.target.split(":")
    try:
        with stopping_at_once():
            code = getattr(importlib.import_module(module), function)(args)
    except UserError as e:
        sys.stderr.write(f"{parser.prog}: error: {e}\n")
        return e.exit_code
    except Stopped as stop:
        sys.stderr.write(f"{parser.prog}: stopped by {stop.name}\n")
        return stop.exit_code
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return code or 0

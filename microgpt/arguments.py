"""The command line's building blocks: argparse types that say in one line what is wrong with a number, and the
options several commands share (--from, --engine, --prompt)."""
import argparse

from microgpt.engines import ENGINES


class Formatter(argparse.HelpFormatter):
    """argparse's help, where a newline in a help text starts a new line: a list, one item to a line."""

    def _split_lines(self, text, width):
        split = super()._split_lines  # (a comprehension has no super() of its own)
        return [line for part in text.splitlines() for line in split(part, width)]


def number(text, kind=float):  # an argparse type's first step: the text as a number, or why not
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a {'whole ' if kind is int else ''}number, got {text!r}") \
            from None


def whole_number(minimum):
    """An argparse type: an int that is at least `minimum`."""
    def parse(text):
        value = number(text, int)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def positive_number(text):
    """An argparse type: a finite float greater than zero."""
    value = number(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number greater than 0, got {text}")
    return value


def number_in(low, high, low_open=False, high_open=True):
    """An argparse type: a float in the interval from low to high (open or closed at each end)."""
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"

    def parse(text):
        value = number(text)
        if not ((value > low if low_open else value >= low) and (value < high if high_open else value <= high)):
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {text}")
        return value
    return parse


def add_source(p, required=True, what="a run directory (train --out) or a .safetensors checkpoint"):
    p.add_argument("--from", dest="source", required=required, metavar="DIR|FILE", help=what)


def add_engine(p, what=""):
    p.add_argument("--engine", choices=ENGINES, help=f"{what}(default: the fastest installed)")


def add_prompt(p, what):
    p.add_argument("--prompt", default="", metavar="TEXT", help=what)

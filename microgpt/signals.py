"""Ctrl-C and SIGTERM, at any moment of any command.

Outside training a signal stops the command at once (`stopping_at_once`, which the command line sets up): Stopped
is raised wherever the program is, and the command line reports it in one line that names the signal. While a run
trains (`Requests`), the first signal is only noted and said: the trainer stops at its next safe point (after the
step, or in the middle of an evaluation) and saves; a second signal, of either kind, quits at once. A scheduler
sends SIGTERM, a person presses Ctrl-C; both are honoured within the time of one training step or one evaluation
batch.
"""
import contextlib
import signal
import time

NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}
COPIES_WITHIN = 1.0  # seconds: under torchrun a Ctrl-C reaches a rank from the terminal and again from torchrun


class Stopped(Exception):
    """A signal that stops the command at once."""

    def __init__(self, signum):
        super().__init__(NAMES[signum])
        self.signum, self.name = signum, NAMES[signum]
        self.exit_code = 128 + signum  # what a shell reports for a process its signal ended


@contextlib.contextmanager
def handling(handler):
    """Both signals go to `handler(signum, frame)` inside the `with`, and back to what they were after it."""
    previous = {signum: signal.signal(signum, handler) for signum in NAMES}
    try:
        yield
    finally:
        for signum, was in previous.items():
            signal.signal(signum, was)


def stop_at_once(signum, frame):
    raise Stopped(signum)


def stopping_at_once():
    """Inside the `with`, either signal raises Stopped where the program is."""
    return handling(stop_at_once)


class Requests:
    """The signals that reach a run while it trains (`with handling(requests.note)`): the first is noted
    (`received`) and said on `stream` with `what` happens next; a second, unless it is a copy of the first (within a
    second of it), raises Stopped."""

    def __init__(self, stream, what):
        self.stream, self.what = stream, what
        self.received = None  # (name of the first signal, when it came)

    def note(self, signum, frame):
        if self.received is None:
            self.received = (NAMES[signum], time.monotonic())
            self.stream.write(f"\n{NAMES[signum]}: {self.what} (Ctrl-C or SIGTERM again quits at once)\n")
            self.stream.flush()
        elif time.monotonic() - self.received[1] > COPIES_WITHIN:
            raise Stopped(signum)

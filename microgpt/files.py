"""A user's file, looked at before it is opened: opening a FIFO with nothing writing to it waits forever, and a
device or a socket is never the text or the checkpoint that was meant. Used by the data and checkpoint readers."""
import os
import stat

from microgpt.errors import UserError

NOT_FILES = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def not_a_file(path):
    """What `path` is when it is not a regular file ("a directory", "a FIFO (named pipe)", ...), found from its
    metadata alone; None for a regular file (or a link to one) and for nothing at all."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # missing or unreadable: opening it says which, in the caller's words
    return next((kind for is_kind, kind in NOT_FILES if is_kind(mode)), None)


def read_bytes(path, label, fix):
    """The bytes of the regular file at `path`; a one-line error naming `label` (e.g. "--data x.txt") and ending
    with `fix` for anything else."""
    kind = not_a_file(path)
    if kind:
        raise UserError(f"{label} is {kind}, not a file; {fix}")
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise UserError(f"{label}: no such file; {fix}") from None
    except OSError as e:
        raise UserError(f"cannot read {label}: {e.strerror}; check the path and its permissions") from None

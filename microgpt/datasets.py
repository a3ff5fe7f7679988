"""The bundled data sets (names, Tiny Shakespeare; provenance in microgpt/data/README.md) and a
user's own text files, read with errors that say what is wrong and what to do."""
import os

from microgpt.atomic import NAMES_FILE, load_docs
from microgpt.errors import UserError

BUNDLED = {
    "names": NAMES_FILE,
    "shakespeare": os.path.join(os.path.dirname(NAMES_FILE), "tinyshakespeare.txt"),
}


def resolve(data):
    """The path of a bundled data set by name, or `data` itself as a path."""
    return BUNDLED.get(data, data)


def read_docs(data):
    """The documents (non-empty lines) of a bundled data set or of a UTF-8 text file."""
    path = resolve(data)
    if os.path.isdir(path):
        raise UserError(f"--data {data} is a directory; give a text file")
    if not os.path.exists(path):
        raise UserError(f"--data {data}: no such file; give a text file or one of: {', '.join(BUNDLED)}")
    try:
        docs = load_docs(path)
    except UnicodeDecodeError as e:
        raise UserError(f"--data {data} is not UTF-8 text (bad byte at offset {e.start}); "
                        "convert it to UTF-8 first") from None
    except OSError as e:
        raise UserError(f"cannot read --data {data}: {e.strerror}; check the path and its permissions") \
            from None
    if not docs:
        raise UserError(f"--data {data} has no text (every line is empty); "
                        "give a file with one document per line")
    return docs

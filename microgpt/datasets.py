"""Data: the bundled sets (provenance in microgpt/data/README.md) and a user's UTF-8 file, read as
documents or as one stream, split into training and held-out parts, and served as batches.

Two formats:
  lines   every non-empty line is a document (a name, a word, a sentence): trained on whole, between
          BOS tokens, in the order of a seeded shuffle; the last 1000 documents of that order (at
          most a tenth) are held out, as makemore does. With the reference seed, training visits the
          documents exactly as the reference run does.
  stream  the whole text is one sequence (a play, a book, code): trained on random windows of
          block_size + 1 tokens; the last 10% is held out.
The held-out part never reaches training, and the split depends only on the data and the seed.
"""
import hashlib
import os
import random

from microgpt.atomic import NAMES_FILE
from microgpt.errors import UserError
from microgpt.tokenizer import train_tokenizer

DATA_DIR = os.path.dirname(NAMES_FILE)
BUNDLED = {  # name -> (file, format)
    "names": (NAMES_FILE, "lines"),
    "shakespeare": (os.path.join(DATA_DIR, "tinyshakespeare.txt"), "stream"),
}
FORMATS = ("lines", "stream")
MAX_HELD_OUT_DOCS = 1000


def read_text(data):
    """(path, text) of a bundled data set by name or of a UTF-8 file; one-line errors otherwise."""
    path = BUNDLED[data][0] if data in BUNDLED else data
    if os.path.isdir(path):
        raise UserError(f"--data {data} is a directory; give a text file")
    if not os.path.exists(path):
        raise UserError(f"--data {data}: no such file; give a text file or one of: {', '.join(BUNDLED)}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"--data {data} is not UTF-8 text (bad byte at offset {e.start}); "
                        "convert it to UTF-8 first") from None
    except OSError as e:
        raise UserError(f"cannot read --data {data}: {e.strerror}; check the path and its permissions") \
            from None
    if not text.strip():
        raise UserError(f"--data {data} has no text (it is empty or blank); give a file with some text")
    return path, text


def checksum(text):
    """The SHA-256 of a data set's text: a checkpoint keeps it, and a resume compares the file's with it."""
    return hashlib.sha256(text.encode()).hexdigest()


def detect_format(text):
    """'stream' for text in paragraphs or long lines (prose, plays, code), 'lines' for a list of short
    items (names, words, short sentences), with the reason, which train prints."""
    lines = text.strip("\n").split("\n")
    if any(not line.strip() for line in lines):
        return "stream", "it has blank lines, so it reads as running text"
    if sum(map(len, lines)) / len(lines) > 80:
        return "stream", "its lines are long (over 80 characters on average), so it reads as running text"
    return "lines", "one short item per line, no blank lines"


def split_documents(data, text, rng):
    """The documents of a lines-format text in the order of one seeded shuffle, as (training, held out):
    the last 1000 (at most a tenth, at least one) are held out."""
    docs = [line.strip() for line in text.split("\n") if line.strip()]
    if len(docs) < 2:
        raise UserError(f"--data {data} has {len(docs)} document; lines format needs at least 2 "
                        "(one to train on, one held out); add lines or use --format stream")
    rng.shuffle(docs)
    held_out = min(MAX_HELD_OUT_DOCS, max(1, len(docs) // 10))
    return docs[:-held_out], docs[-held_out:]


class Dataset:
    """The tokenized training and held-out parts of one data set, in one format."""

    def __init__(self, data, fmt, rng, tokenizer=("char",)):
        """`data`: a bundled name or a path; `fmt`: 'lines', 'stream' or None (detect); `rng`: the
        run's random.Random, which the lines format shuffles with (its first draw, as in the reference);
        `tokenizer`: ("char",) or ("bpe", vocab_size, presplit), trained here on the data."""
        self.name = data
        self.path, text = read_text(data)
        self.sha256 = checksum(text)
        if fmt is None and data in BUNDLED:
            fmt, self.format_reason = BUNDLED[data][1], "the bundled set's format"
        elif fmt is None:
            fmt, self.format_reason = detect_format(text)
        else:
            self.format_reason = "as asked"
        self.format = fmt
        if fmt == "lines":
            train_docs, held_docs = split_documents(data, text, rng)
            # characters must cover the held-out documents too; BPE (bytes cover everything) learns its
            # merges from the training documents alone
            self.tokenizer = train_tokenizer(tokenizer, train_docs + held_docs if tokenizer[0] == "char"
                                             else train_docs)
            self.train = [self._bracket(doc) for doc in train_docs]
            self.held_out = [self._bracket(doc) for doc in held_docs]
            self.train_docs = set(train_docs)  # to tell a sample that copies one
        else:
            cut = len(text) - len(text) // 10  # the last tenth of the characters is held out
            self.tokenizer = train_tokenizer(tokenizer, [text] if tokenizer[0] == "char" else [text[:cut]])
            self.train, self.held_out = self.tokenizer.encode(text[:cut]), self.tokenizer.encode(text[cut:])
            self.train_docs = set()

    def _bracket(self, doc):
        return [self.tokenizer.bos, *self.tokenizer.encode(doc), self.tokenizer.bos]

    def describe(self):
        if self.format == "lines":
            size = f"{len(self.train):,} documents to train on, {len(self.held_out):,} held out"
        else:
            size = f"{len(self.train):,} tokens to train on, {len(self.held_out):,} held out"
        return f"{self.name}: {self.format} ({self.format_reason}); {size}; vocab size {self.tokenizer.vocab_size}"

    def check(self, block_size):
        """Refuse a stream too short for one window of block_size + 1 tokens in either part."""
        if self.format == "stream" and min(len(self.train), len(self.held_out)) < block_size + 1:
            need, have = 10 * (block_size + 1), len(self.train) + len(self.held_out)
            raise UserError(f"--data {self.name} is too short for one window of {block_size + 1} tokens in its "
                            f"held-out tenth (needs about {need} characters, has {have}); "
                            "use a smaller --block-size, more text, or --format lines")

    def batch(self, step, batch_size, block_size, seed):
        """The token lists step `step` trains on. Lines: the next batch_size documents in order, cycling
        (step s of a batch-1 run takes document s, as the reference does). Stream: batch_size random
        windows, drawn from a generator seeded by (seed, step) alone, so a resumed run draws the same."""
        if self.format == "lines":
            return [self.train[(step * batch_size + b) % len(self.train)] for b in range(batch_size)]
        rng = random.Random(f"{seed}/{step}")
        starts = [rng.randrange(len(self.train) - block_size) for _ in range(batch_size)]
        return [self.train[i:i + block_size + 1] for i in starts]

    def held_out_batches(self, block_size, batch_size, max_windows=None):
        """The held-out part as batches of token lists, every held-out token predicted once. Streams are
        cut into consecutive windows; max_windows keeps that many, evenly spread (a quick estimate)."""
        if self.format == "lines":
            seqs = self.held_out
        else:
            seqs = [self.held_out[i:i + block_size + 1] for i in range(0, len(self.held_out) - 1, block_size)]
            if max_windows and len(seqs) > max_windows:
                seqs = [seqs[i * len(seqs) // max_windows] for i in range(max_windows)]
        return [seqs[i:i + batch_size] for i in range(0, len(seqs), batch_size)]

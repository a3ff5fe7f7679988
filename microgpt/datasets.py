"""Data: the bundled sets (provenance in microgpt/data/README.md) and a user's UTF-8 file, read as
documents or as one stream, split into training and held-out parts, and served as batches.

Two formats:
  lines   every non-empty line is a document (a name, a word, a sentence): trained on whole, between
          BOS tokens, in the order of a seeded shuffle; the last 1000 documents of that order (at
          most a tenth) are held out, as makemore does. With the reference seed, training visits the
          documents exactly as the reference run does.
  stream  the whole text is one sequence (a play, a book, code): trained on random windows of
          block_size + 1 tokens; the last 10% is held out. Its tokens are machine integers (an
          array('q')), so that a window is a slice of bytes, which an array engine takes in one copy
          (the torch engine makes a batch of 64 windows of 257 tokens in 0.03 ms, from lists in 2.7 ms).
The held-out part never reaches training, and the split depends only on the data and the seed.
"""
import hashlib
import os
import random
from array import array

from microgpt.atomic import NAMES_FILE
from microgpt.errors import UserError
from microgpt.files import read_bytes
from microgpt.tokenizer import train_tokenizer

DATA_DIR = os.path.dirname(NAMES_FILE)
BUNDLED = {  # name -> (file, format)
    "names": (NAMES_FILE, "lines"),
    "shakespeare": (os.path.join(DATA_DIR, "tinyshakespeare.txt"), "stream"),
}
FORMATS = ("lines", "stream")
MAX_HELD_OUT_DOCS = 1000
BOM = "\ufeff"  # the byte-order mark, EF BB BF in UTF-8


def read_text(data):
    """(path, text, notes) of a bundled data set by name or of a UTF-8 file, `notes` saying what was dropped from
    it (a byte-order mark, which is no character of the text); one-line errors for anything else."""
    path = BUNDLED[data][0] if data in BUNDLED else data
    raw = read_bytes(path, f"--data {data}", f"give a text file or one of: {', '.join(BUNDLED)}")
    try:
        text = raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # newlines as text mode reads them
    except UnicodeDecodeError as e:
        raise UserError(f"--data {data} is not UTF-8 text (bad byte at offset {e.start}); "
                        "convert it to UTF-8 first") from None
    notes = []
    if text.startswith(BOM):  # Windows editors start UTF-8 files with one; as a character it would become a token
        text = text[len(BOM):]
        notes.append("a byte-order mark at its start was dropped")
    if not text.strip():
        raise UserError(f"--data {data} has no text (it is empty or blank); give a file with some text")
    return path, text, notes


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
        self.path, text, self.notes = read_text(data)
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
            self.train, self.held_out = (array("q", self.tokenizer.encode(part)) for part in (text[:cut], text[cut:]))
            self.train_docs = set()

    def _bracket(self, doc):
        return [self.tokenizer.bos, *self.tokenizer.encode(doc), self.tokenizer.bos]

    def describe(self):
        if self.format == "lines":
            size = f"{len(self.train):,} documents to train on, {len(self.held_out):,} held out"
        else:
            size = f"{len(self.train):,} tokens to train on, {len(self.held_out):,} held out"
        notes = "".join(f"; {note}" for note in self.notes)
        return (f"{self.name}: {self.format} ({self.format_reason}); {size}; vocab size {self.tokenizer.vocab_size}"
                + notes)

    def check(self, block_size):
        """Refuse a stream too short for one window of block_size + 1 tokens in either part; note the documents
        longer than that, which are cut to it (they are trained on, and evaluated on, only as far as it)."""
        if self.format == "lines":
            lengths = [len(doc) for doc in self.train + self.held_out if len(doc) > block_size + 1]
            if lengths:
                many = len(lengths) > 1
                self.notes.append(f"{len(lengths):,} document{'s' if many else ''} longer than the block "
                                  f"({'the longest ' if many else ''}{max(lengths):,} tokens, BOS included) "
                                  f"{'are' if many else 'is'} cut to {'their' if many else 'its'} first "
                                  f"{block_size + 1} tokens (block_size + 1)")
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
            seqs = windows(self.held_out, block_size)
            if max_windows and len(seqs) > max_windows:
                seqs = [seqs[i * len(seqs) // max_windows] for i in range(max_windows)]
        return batched(seqs, batch_size)


def windows(tokens, block_size):
    """A stream's tokens as consecutive windows of block_size + 1, each starting where the last one's inputs end:
    every token after the first is predicted once."""
    return [tokens[i:i + block_size + 1] for i in range(0, len(tokens) - 1, block_size)]


def batched(seqs, batch_size):
    return [seqs[i:i + batch_size] for i in range(0, len(seqs), batch_size)]

"""Tokenizers: text to token ids and back, into a checkpoint's metadata and out again.

Every tokenizer offers the same small interface, so that training, sampling and checkpoints never ask
which one they hold:
  encode(text) -> ids        decode(ids) -> text        vocab_size, bos (the id that marks a boundary)
  unknown(text) -> the characters encode() cannot take   token_bytes(id) -> what one token stands for
  to_metadata() -> dict; from_metadata(dict)             save(path); load(path): a versioned text file
The character tokenizer is the atomic file's (a character's id is its index among the sorted distinct
characters, and BOS comes after them); byte-level BPE (microgpt/bpe.py) is the other.
"""
import json

from microgpt.atomic import build_vocab
from microgpt.bpe import BPETokenizer
from microgpt.errors import UserError

CHAR_FORMAT = "microgpt char v1"


class CharTokenizer:
    kind = "char"

    def __init__(self, chars):
        self.chars = list(chars)
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        self.bos = len(self.chars)
        self.vocab_size = len(self.chars) + 1

    @classmethod
    def train(cls, texts):
        """The tokenizer of the atomic file: every distinct character of `texts`, sorted."""
        return cls(build_vocab(texts))

    def unknown(self, text):
        """The distinct characters of `text` that have no id, in order of appearance."""
        return list(dict.fromkeys(ch for ch in text if ch not in self.stoi))

    def encode(self, text):
        unknown = self.unknown(text)
        if unknown:
            raise UserError(f"the tokenizer has never seen {''.join(unknown)!r} (characters it knows: "
                            f"{''.join(self.chars)!r}); leave them out")
        return [self.stoi[ch] for ch in text]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids if i != self.bos)

    def token_bytes(self, i):
        return b"<BOS>" if i == self.bos else self.chars[i].encode()

    def save(self, path):
        """The version line, then the characters as one JSON string (escapes keep it readable)."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"{CHAR_FORMAT}\n{json.dumps(''.join(self.chars), ensure_ascii=False)}\n")

    @classmethod
    def load(cls, path):
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        if len(lines) < 2 or lines[0] != CHAR_FORMAT:
            raise UserError(f"{path} is not a {CHAR_FORMAT} file")
        return cls(json.loads(lines[1]))

    def to_metadata(self):
        return {"type": self.kind, "chars": "".join(self.chars)}

    @classmethod
    def from_metadata(cls, meta):
        return cls(meta["chars"])


TOKENIZERS = {CharTokenizer.kind: CharTokenizer, BPETokenizer.kind: BPETokenizer}


def train_tokenizer(spec, texts):
    """("char",) or ("bpe", vocab_size, presplit), learned from `texts`."""
    if spec[0] == "char":
        return CharTokenizer.train(texts)
    return BPETokenizer.train(texts, spec[1], spec[2])


def from_metadata(meta):
    """The tokenizer that to_metadata() described."""
    if meta.get("type") not in TOKENIZERS:
        raise UserError(f"unknown tokenizer type {meta.get('type')!r} in the checkpoint; "
                        "a newer microgpt may read it")
    return TOKENIZERS[meta["type"]].from_metadata(meta)

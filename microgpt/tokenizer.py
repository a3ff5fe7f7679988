"""Tokenizers: text to token ids and back, and into a checkpoint's metadata and out again.

Every tokenizer offers the same small interface, so that training, sampling and checkpoints never ask
which one they hold:
  encode(text) -> ids        decode(ids) -> text        vocab_size, bos (the id that marks a boundary)
  unknown(text) -> the characters encode() cannot take   to_metadata() -> dict; from_metadata(dict)
The character tokenizer is the atomic file's (a character's id is its index among the sorted distinct
characters, and BOS comes after them); byte-level BPE is the next one to implement this interface.
"""
from microgpt.atomic import build_vocab
from microgpt.errors import UserError


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

    def to_metadata(self):
        return {"type": self.kind, "chars": "".join(self.chars)}

    @classmethod
    def from_metadata(cls, meta):
        return cls(meta["chars"])


TOKENIZERS = {CharTokenizer.kind: CharTokenizer}


def from_metadata(meta):
    """The tokenizer that to_metadata() described."""
    if meta.get("type") not in TOKENIZERS:
        raise UserError(f"unknown tokenizer type {meta.get('type')!r} in the checkpoint; "
                        "a newer microgpt may read it")
    return TOKENIZERS[meta["type"]].from_metadata(meta)

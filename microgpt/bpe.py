"""Byte-level byte-pair encoding (BPE), standard library only: the tokenizer of GPT-2 and its successors.

Text is UTF-8 bytes, so the first 256 token ids are the bytes themselves and nothing is ever unknown.
Training looks for the most frequent pair of adjacent tokens, gives it a new id, replaces every
occurrence, and repeats until the vocabulary has the size asked for; one more id, BOS, comes last.
Encoding replays the merges in the order they were learned; decoding joins the bytes and decodes them as
UTF-8, replacing what is not valid on its own (a sample can stop in the middle of a character).

Two choices are this file's, and fixed:
  - Ties: when two pairs are equally frequent, the one with the smaller ids, (first, second), merges first.
  - Pre-split (optional, on by default): the text is first cut with the `re` module into words with their
    leading space, runs of digits, runs of other symbols and runs of white space (PATTERN below, a
    standard-library cousin of GPT-2's), and no merge crosses a cut, so tokens never glue a word to the
    punctuation after it. Without it the text is one sequence.

Training keeps, for every pair, its count and the positions where it occurs, in a doubly linked list of
the tokens; a merge touches only the positions of the merged pair and their neighbours, so it costs what
it changes, never a recount of the whole text. The pair to merge comes from a heap of counts (entries made
stale by later merges are skipped when they surface).
"""
import heapq
import re
from collections import defaultdict

from microgpt.errors import UserError

PATTERN = r"'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"
FORMAT = "microgpt bpe v1"


class Sequence:
    """Tokens as a doubly linked list over positions, with the positions of every adjacent pair.
    Chunks (from the pre-split) are separate: no pair spans two of them."""

    def __init__(self, chunks):
        self.token, self.prev, self.next = [], [], []
        for chunk in chunks:
            start = len(self.token)
            self.token.extend(chunk)
            self.prev.extend(range(start - 1, start + len(chunk) - 1))
            self.next.extend(range(start + 1, start + len(chunk) + 1))
            if chunk:
                self.prev[start], self.next[-1] = -1, -1  # chunk boundaries
        self.where = defaultdict(set)  # (a, b) -> left positions where a is followed by b
        for i, nxt in enumerate(self.next):
            if nxt != -1:
                self.where[self.token[i], self.token[nxt]].add(i)

    def count(self, pair):
        return len(self.where.get(pair, ()))

    def merge(self, pair, new):
        """Replace every (non-overlapping, left to right) occurrence of `pair` by `new`; return the pairs
        whose counts changed."""
        a, b = pair
        changed = {pair}
        for i in sorted(self.where.pop(pair, ())):
            j = self.next[i]
            if self.token[i] != a or j == -1 or self.token[j] != b:
                continue  # consumed by an overlapping occurrence just merged ("a a a")
            p, n = self.prev[i], self.next[j]
            if p != -1:  # (x, a) becomes (x, new)
                self._unlink(self.token[p], a, p, changed)
                self.where[self.token[p], new].add(p)
                changed.add((self.token[p], new))
            if n != -1:  # (b, y) becomes (new, y)
                self._unlink(b, self.token[n], j, changed)
                self.where[new, self.token[n]].add(i)
                changed.add((new, self.token[n]))
                self.prev[n] = i
            self.token[i], self.next[i] = new, n
            self.token[j] = -1  # j is gone
        return changed

    def _unlink(self, a, b, position, changed):
        positions = self.where.get((a, b))
        if positions is not None:
            positions.discard(position)
            changed.add((a, b))

    def tokens(self):
        return [t for t in self.token if t != -1]


def split(text, presplit):
    return re.findall(PATTERN, text) if presplit else [text]


class BPETokenizer:
    kind = "bpe"

    def __init__(self, merges, presplit=True):
        """merges: [(a, b), ...] in the order learned; the i-th makes id 256 + i."""
        self.merges, self.presplit = [tuple(m) for m in merges], presplit
        self.rank = {pair: r for r, pair in enumerate(self.merges)}
        self.vocab = [bytes([i]) for i in range(256)]
        for a, b in self.merges:
            self.vocab.append(self.vocab[a] + self.vocab[b])
        self.bos = len(self.vocab)
        self.vocab_size = self.bos + 1

    @classmethod
    def train(cls, texts, vocab_size, presplit=True):
        """Learn vocab_size - 257 merges (256 bytes and BOS take the rest) from `texts`."""
        if vocab_size < 257:
            raise UserError(f"--vocab-size {vocab_size} is too small: 256 byte tokens and BOS come first; "
                            "ask for at least 257")
        seq = Sequence(list(chunk.encode()) for text in texts for chunk in split(text, presplit))
        heap = [(-len(positions), pair) for pair, positions in seq.where.items()]
        heapq.heapify(heap)
        merges = []
        while len(merges) < vocab_size - 257 and heap:
            negative, pair = heapq.heappop(heap)
            if -negative != seq.count(pair):  # stale: the count changed since this entry was pushed
                continue
            if -negative < 2:
                break  # nothing repeats any more
            merges.append(pair)
            for changed in seq.merge(pair, 256 + len(merges) - 1):
                if seq.count(changed):
                    heapq.heappush(heap, (-seq.count(changed), changed))
        return cls(merges, presplit)

    def unknown(self, text):
        return []  # every text is bytes

    def encode(self, text):
        ids, cache = [], {}
        for chunk in split(text, self.presplit):
            if chunk not in cache:  # words repeat: each distinct one is encoded once
                cache[chunk] = self._encode_chunk(list(chunk.encode()))
            ids.extend(cache[chunk])
        return ids

    def _encode_chunk(self, tokens):
        """Apply the merges in the order learned (a later merge can never make an earlier pair appear).
        A short chunk merges its lowest-ranked pair until none is left; a long one (a text without the
        pre-split) replays each merge over a linked list, touching only where the pair occurs."""
        if len(tokens) > 256:
            seq = Sequence([tokens])
            for rank, pair in enumerate(self.merges):
                if seq.count(pair):
                    seq.merge(pair, 256 + rank)
            return seq.tokens()
        while len(tokens) > 1:
            rank, i = min((self.rank.get(pair, len(self.merges)), i) for i, pair in enumerate(zip(tokens, tokens[1:])))
            if rank == len(self.merges):
                break  # no pair left that has a merge
            pair, new, merged, i = self.merges[rank], 256 + rank, [], 0
            while i < len(tokens):  # every occurrence, left to right
                if i + 1 < len(tokens) and (tokens[i], tokens[i + 1]) == pair:
                    merged.append(new)
                    i += 2
                else:
                    merged.append(tokens[i])
                    i += 1
            tokens = merged
        return tokens

    def decode(self, ids):
        return b"".join(self.vocab[i] for i in ids if i != self.bos).decode("utf-8", errors="replace")

    def token_bytes(self, i):
        return b"<BOS>" if i == self.bos else self.vocab[i]

    def to_metadata(self):
        return {"type": self.kind, "presplit": self.presplit, "merges": [list(m) for m in self.merges]}

    @classmethod
    def from_metadata(cls, meta):
        return cls(meta["merges"], meta["presplit"])

    def save(self, path):
        """A text file a person can read and diff: a version line, the pre-split, then one merge per line
        with what it stands for."""
        lines = [FORMAT, f"presplit {'words' if self.presplit else 'none'}", f"merges {len(self.merges)}"]
        for rank, (a, b) in enumerate(self.merges):
            lines.append(f"{256 + rank} = {a} {b}    # {self.vocab[256 + rank]!r}")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

    @classmethod
    def load(cls, path):
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        if not lines or lines[0] != FORMAT:
            raise UserError(f"{path} is not a {FORMAT} file (first line {lines[0] if lines else ''!r})")
        presplit = lines[1] == "presplit words"
        merges = [tuple(int(x) for x in line.split("#")[0].split("=")[1].split()) for line in lines[3:]]
        return cls(merges, presplit)

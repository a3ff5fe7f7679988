"""Byte-level BPE: the known answer, the incremental trainer against a naive one, round trips on any text,
save/load, determinism, the pre-split, and a Shakespeare model trained and sampled end to end with it."""
import functools
from collections import Counter

import pytest
from conftest import ROOT, microgpt
from hypothesis import example, given, settings
from hypothesis import strategies as st

from microgpt.bpe import BPETokenizer, Sequence, split
from microgpt.tokenizer import CharTokenizer, from_metadata


@functools.cache
def shakespeare():
    """The first 60 kB of Tiny Shakespeare, read on first use (collecting the tests reads no file) and once.
    A plain cached function rather than a fixture, so that hypothesis tests can call it too."""
    return (ROOT / "microgpt" / "data" / "tinyshakespeare.txt").read_text()[:60_000]


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train([shakespeare()], 400)


def replace_pair(tokens, pair, new):
    """`tokens` with every occurrence of `pair` replaced by `new`, left to right: "a a a" merges to "aa a"."""
    out, i = [], 0
    while i < len(tokens):
        if i + 1 < len(tokens) and (tokens[i], tokens[i + 1]) == pair:
            out.append(new)
            i += 2
        else:
            out.append(tokens[i])
            i += 1
    return out


def naive_merges(texts, vocab_size, presplit):
    """BPE training as its definition reads, recounting every pair after every merge: the answer that
    BPETokenizer.train, which only updates the counts a merge changes, must give exactly.

    A pair's count is the number of positions where its first token is followed by its second, within a chunk,
    so "a a a" counts (a, a) twice though a merge can replace it only once: what Sequence.count says, and the
    counts decide the order of the merges. The most frequent pair merges first, ties going to the smaller
    (first, second); training stops when the vocabulary is full or nothing occurs twice."""
    chunks = [list(chunk.encode()) for text in texts for chunk in split(text, presplit)]
    merges = []
    while len(merges) < vocab_size - 257:
        counts = Counter(pair for chunk in chunks for pair in zip(chunk, chunk[1:]))
        if not counts:
            break
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        if counts[best] < 2:
            break
        merges.append(best)
        chunks = [replace_pair(chunk, best, 256 + len(merges) - 1) for chunk in chunks]
    return merges


def naive_encode(merges, text, presplit):
    """Encoding by its definition: each chunk's bytes, with every merge replayed over it in the order learned."""
    ids = []
    for chunk in split(text, presplit):
        tokens = list(chunk.encode())
        for rank, pair in enumerate(merges):
            tokens = replace_pair(tokens, pair, 256 + rank)
        ids.extend(tokens)
    return ids


# Small alphabets make pairs repeat, so merges happen, merged tokens merge again, and runs like "aaaa" overlap;
# a chunk of over 256 bytes takes encode's other path (the linked list), so some texts are that long.
TEXT = st.one_of(st.text(alphabet="ab c", max_size=100), st.text(alphabet="a ", max_size=60), st.text(max_size=60),
                 st.text(alphabet="ab", min_size=257, max_size=400))


@settings(max_examples=200, deadline=None)
@given(st.lists(TEXT, max_size=4), st.integers(257, 300), st.booleans(), TEXT)
@example(["aaaa aaa baaaab"], 300, False, "aaaaaaa b")  # overlapping runs, always tried
@example(["aaaa aaa baaaab"], 300, True, "aaaaaaa b")
def test_incremental_training_equals_the_naive_one(texts, vocab_size, presplit, fresh):
    tok = BPETokenizer.train(texts, vocab_size, presplit)
    assert tok.merges == naive_merges(texts, vocab_size, presplit)
    for text in [*texts, fresh]:
        assert tok.encode(text) == naive_encode(tok.merges, text, presplit)


def test_known_answer():
    # minbpe's example: 3 merges on "aaabdaaabac" (ids 256-258 are the merges)
    tok = BPETokenizer.train(["aaabdaaabac"], 256 + 3 + 1, presplit=False)
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert tok.decode([258, 100, 258, 97, 99]) == "aaabdaaabac" and tok.bos == 259


def test_ties_go_to_the_smaller_pair():
    tok = BPETokenizer.train(["abcd"], 258, presplit=False)  # three pairs, each seen once: none repeats
    assert tok.merges == []
    tok = BPETokenizer.train(["cdcdabab"], 258, presplit=False)  # (a, b) and (c, d) twice each
    assert tok.merges == [(97, 98)]


@pytest.mark.parametrize("text", ["", "a", "hello world", "emoji 🙂🚀 ok", "한국어 텍스트", "mixed: ab 中文 ∑ x²\n\t",
                                  "   leading and trailing   ", "x" * 1000])
def test_round_trip(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_round_trip_of_any_text(text):
    tok = BPETokenizer.train([shakespeare()[:5000]], 300)
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_presplit_covers_every_character(text):
    assert "".join(split(text, True)) == text


@settings(max_examples=100, deadline=None)
@given(st.binary())
def test_any_bytes_decode_with_replacement_never_crash(data):
    tok = BPETokenizer.train([shakespeare()[:5000]], 300)
    assert tok.decode(list(data)) == data.decode("utf-8", errors="replace")


def test_incremental_counts_equal_a_recount(bpe):
    # after every merge the linked list's pair counts are what counting from scratch gives
    text = list(shakespeare()[:3000].encode())
    seq = Sequence([text])
    for rank, pair in enumerate(bpe.merges[:60]):
        seq.merge(pair, 256 + rank)
        tokens = seq.tokens()
        recount = {}
        for a, b in zip(tokens, tokens[1:]):
            recount[a, b] = recount.get((a, b), 0) + 1
        # overlapping pairs ("a a a") are counted once per position, as here
        assert {p: seq.count(p) for p in recount} == recount


def test_training_is_deterministic_and_presplit_keeps_words_apart():
    a, b = BPETokenizer.train([shakespeare()], 320), BPETokenizer.train([shakespeare()], 320)
    assert a.merges == b.merges
    assert all(not (tok.strip() and tok[-1:].isspace()) for tok in (a.vocab[i].decode("utf-8", "replace")
                                                                      for i in range(256, a.bos)))
    joined = BPETokenizer.train([shakespeare()], 320, presplit=False)
    assert joined.merges != a.merges


def test_save_and_load_are_the_identity(bpe, tmp_path):
    path = tmp_path / "bpe.txt"
    bpe.save(path)
    assert path.read_text().splitlines()[:2] == ["microgpt bpe v1", "presplit words"]
    loaded = BPETokenizer.load(path)
    assert loaded.merges == bpe.merges and loaded.encode(shakespeare()[:500]) == bpe.encode(shakespeare()[:500])
    assert from_metadata(bpe.to_metadata()).merges == bpe.merges
    chars = CharTokenizer.train(["hello\nworld"])
    chars.save(tmp_path / "chars.txt")
    assert CharTokenizer.load(tmp_path / "chars.txt").chars == chars.chars


def test_compresses_shakespeare(bpe):
    ids = bpe.encode(shakespeare())
    assert len(shakespeare().encode()) / len(ids) > 1.7  # 144 merges on 60 kB: 1.78 measured


def test_shakespeare_bpe_model_trains_and_samples_on_the_python_engine(tmp_path):
    def cli(*args):
        return microgpt(*args, cwd=tmp_path)
    trained = cli("train", "--data", "shakespeare", "--tokenizer", "bpe", "--vocab-size", 300, "--engine", "python",
                  "--n-embd", 16, "--block-size", 16, "--steps", 20, "--eval-every", 20, "--num-samples", 1,
                  "--out", "run")
    assert trained.returncode == 0, trained.stderr
    assert "vocab size 300" in trained.stdout and "held-out loss" in trained.stdout
    sample = cli("sample", "--from", "run", "--prompt", "ROMEO:", "--max-new-tokens", 30, "--num-samples", 2)
    assert sample.returncode == 0 and sample.stdout.splitlines()[2].startswith("ROMEO:")
    shown = cli("tokenize", "--from", "run", "To be, or not")
    assert shown.returncode == 0 and "bpe tokenizer, vocab size 300" in shown.stdout

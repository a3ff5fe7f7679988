"""Byte-level BPE: the known answer, round trips on any text, save/load, determinism, the pre-split, and a
Shakespeare model trained and sampled end to end with it."""
import os
import subprocess
import sys

import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from microgpt.bpe import BPETokenizer, Sequence, split
from microgpt.tokenizer import CharTokenizer, from_metadata

SHAKESPEARE = (ROOT / "microgpt" / "data" / "tinyshakespeare.txt").read_text()[:60_000]


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train([SHAKESPEARE], 400)


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
    tok = BPETokenizer.train([SHAKESPEARE[:5000]], 300)
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_presplit_covers_every_character(text):
    assert "".join(split(text, True)) == text


@settings(max_examples=100, deadline=None)
@given(st.binary())
def test_any_bytes_decode_with_replacement_never_crash(data):
    tok = BPETokenizer.train([SHAKESPEARE[:5000]], 300)
    assert tok.decode(list(data)) == data.decode("utf-8", errors="replace")


def test_incremental_counts_equal_a_recount(bpe):
    # after every merge the linked list's pair counts are what counting from scratch gives
    text = list(SHAKESPEARE[:3000].encode())
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
    a, b = BPETokenizer.train([SHAKESPEARE], 320), BPETokenizer.train([SHAKESPEARE], 320)
    assert a.merges == b.merges
    assert all(not (tok.strip() and tok[-1:].isspace()) for tok in (a.vocab[i].decode("utf-8", "replace")
                                                                      for i in range(256, a.bos)))
    joined = BPETokenizer.train([SHAKESPEARE], 320, presplit=False)
    assert joined.merges != a.merges


def test_save_and_load_are_the_identity(bpe, tmp_path):
    path = tmp_path / "bpe.txt"
    bpe.save(path)
    assert path.read_text().splitlines()[:2] == ["microgpt bpe v1", "presplit words"]
    loaded = BPETokenizer.load(path)
    assert loaded.merges == bpe.merges and loaded.encode(SHAKESPEARE[:500]) == bpe.encode(SHAKESPEARE[:500])
    assert from_metadata(bpe.to_metadata()).merges == bpe.merges
    chars = CharTokenizer.train(["hello\nworld"])
    chars.save(tmp_path / "chars.txt")
    assert CharTokenizer.load(tmp_path / "chars.txt").chars == chars.chars


def test_compresses_shakespeare(bpe):
    ids = bpe.encode(SHAKESPEARE)
    assert len(SHAKESPEARE.encode()) / len(ids) > 1.7  # 144 merges on 60 kB: 1.78 measured


def test_shakespeare_bpe_model_trains_and_samples_on_the_python_engine(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "microgpt", *map(str, args)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
    trained = cli("train", "--data", "shakespeare", "--tokenizer", "bpe", "--vocab-size", 300, "--engine", "python",
                  "--n-embd", 16, "--block-size", 16, "--steps", 20, "--eval-every", 20, "--num-samples", 1,
                  "--out", "run")
    assert trained.returncode == 0, trained.stderr
    assert "vocab size 300" in trained.stdout and "held-out loss" in trained.stdout
    sample = cli("sample", "--from", "run", "--prompt", "ROMEO:", "--max-new-tokens", 30, "--num-samples", 2)
    assert sample.returncode == 0 and sample.stdout.splitlines()[2].startswith("ROMEO:")
    shown = cli("tokenize", "--from", "run", "To be, or not")
    assert shown.returncode == 0 and "bpe tokenizer, vocab size 300" in shown.stdout

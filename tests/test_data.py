"""The bundled data sets are the files their provenance table (microgpt/data/README.md) describes."""
import hashlib
import random
import re

import pytest

from microgpt.datasets import BUNDLED, DATA_DIR, Dataset, detect_format, read_text


def provenance_rows():
    readme = DATA_DIR + "/README.md"
    with open(readme, encoding="utf-8") as f:
        return {m[1]: (int(m[2].replace(",", "")), m[3]) for m in
                re.finditer(r"^\| (\S+\.txt) \|.*?\| ([\d,]+) B \| ([0-9a-f]{64}) \|", f.read(), re.M)}


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_file_matches_its_provenance(name):
    path = BUNDLED[name][0]
    size, sha256 = provenance_rows()[path.rsplit("/", 1)[1]]
    with open(path, "rb") as f:
        content = f.read()
    assert len(content) == size and hashlib.sha256(content).hexdigest() == sha256


def test_names_split_is_makemores_1000_held_out_documents_in_the_reference_order():
    data = Dataset("names", None, random.Random(42))
    assert (len(data.train), len(data.held_out)) == (31033, 1000)
    docs = [line.strip() for line in read_text("names")[1].split("\n") if line.strip()]
    random.Random(42).shuffle(docs)  # the reference run's order: its step s trains on docs[s]
    assert [data.tokenizer.decode(doc) for doc in data.train[:1000]] == docs[:1000]
    assert [data.tokenizer.decode(doc) for doc in data.held_out] == docs[31033:]


def test_shakespeare_holds_out_its_last_tenth():
    data = Dataset("shakespeare", None, random.Random(0))
    text = read_text("shakespeare")[1]
    assert data.format == "stream" and len(data.held_out) == len(text) // 10
    assert data.tokenizer.decode(data.held_out) == text[-(len(text) // 10):]


@pytest.mark.parametrize(("text", "fmt"), [("anna\nbob\n", "lines"), ("One.\n\nTwo.\n", "stream"),
                                          ("x" * 200 + "\n" + "y" * 100, "stream")])
def test_format_detection(text, fmt):
    assert detect_format(text)[0] == fmt


def test_stream_batches_depend_only_on_seed_and_step():
    data = Dataset("shakespeare", None, random.Random(0))
    assert data.batch(7, 4, 32, seed=1) == data.batch(7, 4, 32, seed=1) != data.batch(8, 4, 32, seed=1)
    assert all(len(w) == 33 for w in data.batch(7, 4, 32, seed=1))


@pytest.mark.parametrize("fmt", ["lines", "stream"])
def test_a_byte_order_mark_is_dropped_and_said(tmp_path, fmt):
    text = "anna\nbob\nclara\ndave\nemma\n" * 40
    (tmp_path / "plain.txt").write_text(text, encoding="utf-8")
    (tmp_path / "bom.txt").write_text(text, encoding="utf-8-sig")  # EF BB BF, then the same text
    plain, bom = (Dataset(str(tmp_path / name), fmt, random.Random(0)) for name in ("plain.txt", "bom.txt"))
    assert (tmp_path / "bom.txt").read_bytes().startswith(b"\xef\xbb\xbf")
    assert bom.tokenizer.chars == plain.tokenizer.chars and "\ufeff" not in bom.tokenizer.chars
    assert bom.train == plain.train and bom.held_out == plain.held_out
    assert "a byte-order mark at its start was dropped" in bom.describe() and "byte-order" not in plain.describe()


def test_long_documents_in_lines_mode_are_counted_and_reported(tmp_path):
    (tmp_path / "long.txt").write_text("x" * 2000 + "\nab\nbc\ncd\nde\nfg\n" + "y" * 30 + "\n")
    data = Dataset(str(tmp_path / "long.txt"), "lines", random.Random(0))
    data.check(16)
    assert ("2 documents longer than the block (the longest 2,002 tokens, BOS included) are cut to their first 17 "
            "tokens (block_size + 1)") in data.describe()
    short = Dataset(str(tmp_path / "long.txt"), "lines", random.Random(0))
    short.check(2048)
    assert "longer than the block" not in short.describe()

"""`evaluate`: a run's held-out loss is train's final one, the same on every engine; any text file per token and per
character, with the tokens counted; one line for what cannot be evaluated."""
import json
import random

import pytest
from conftest import microgpt
from test_engines import FAST

from microgpt.datasets import split_documents
from microgpt.evaluation import characters, file_batches, held_out_batches, mean_loss
from microgpt.loading import open_model

WORDS = ["anna", "bob", "clara", "dave", "eve", "frank", "gina", "hal", "ivy", "jo", "kim", "lena", "max", "nora"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A float64 run of 40 steps on a small lines file, and a BPE one on the same words."""
    where = tmp_path_factory.mktemp("evaluate")
    (where / "words.txt").write_text("\n".join(WORDS) + "\n")
    for out, extra in (("run", []), ("bpe", ["--tokenizer", "bpe", "--vocab-size", 270])):
        result = microgpt("train", "--data", "words.txt", "--steps", 40, "--n-layer", 2, "--out", out,
                          "--num-samples", 0, *extra, cwd=where)
        assert result.returncode == 0, result.stderr
    return where


@pytest.mark.parametrize("name", ["scalar", *FAST])
def test_the_held_out_loss_is_trains_final_one_on_every_engine(trained, name, monkeypatch):
    monkeypatch.chdir(trained)  # (the run names its data by the path it was given)
    final = [json.loads(line) for line in (trained / "run" / "log.jsonl").open() if "held_out_loss" in line][-1]
    engine, _, meta, _ = open_model("run", name, "last")
    loss, tokens = mean_loss(engine, held_out_batches(meta, engine.cfg.block_size, engine.eval_batch),
                             engine.cfg.block_size)
    assert loss == pytest.approx(final["held_out_loss"], rel=1e-12)
    _, held_out = split_documents("words.txt", (trained / "words.txt").read_text(), random.Random(42))
    assert tokens == sum(len(doc) + 1 for doc in held_out)  # each letter and each end, predicted once


def test_a_file_is_read_in_the_runs_format_and_its_characters_counted(trained):
    engine, tok, _, _ = open_model(str(trained / "run"), "python")
    (trained / "two.txt").write_text("anna\n\nbob\n")
    batches = file_batches(tok, str(trained / "two.txt"), "lines", engine.cfg.block_size, 64)
    assert [[tok.decode([t for t in seq if t != tok.bos]) for seq in batch] for batch in batches] == [["anna", "bob"]]
    assert characters(tok, batches, engine.cfg.block_size) == 5 + 4  # each letter, and each document's end
    result = microgpt("evaluate", "--from", "run", "--data", "two.txt", cwd=trained)
    assert result.returncode == 0, result.stderr
    assert "two.txt (as lines): 9 tokens predicted, 9 characters" in result.stdout


def test_with_bpe_a_token_stands_for_several_characters(trained):
    result = microgpt("evaluate", "--from", "bpe", "--data", "words.txt", cwd=trained)  # (the merges were made there)
    assert result.returncode == 0, result.stderr
    counts, losses = result.stdout.splitlines()[1:]
    tokens, chars = (int(counts.split(": ")[1].split()[i].replace(",", "")) for i in (0, 3))
    per_token, per_char = float(losses.split()[1]), float(losses.split()[5])
    assert tokens < chars and per_char == pytest.approx(per_token * tokens / chars, abs=1e-4)


@pytest.mark.parametrize(("setup", "args", "says"), [
    (lambda where: (where / "empty.txt").write_text("\n\n"), ["--data", "empty.txt"], "has no text"),
    (lambda where: (where / "caps.txt").write_text("ANNA\n"), ["--data", "caps.txt"], "the tokenizer has never seen"),
    (lambda where: None, ["--data", "nowhere.txt"], "nowhere.txt"),
])
def test_what_cannot_be_evaluated_is_one_line(trained, setup, args, says):
    setup(trained)
    result = microgpt("evaluate", "--from", "run", *args, cwd=trained)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and says in result.stderr, result.stderr


def test_a_changed_data_file_has_no_held_out_part_to_evaluate(trained, tmp_path):
    (tmp_path / "words.txt").write_text("\n".join(reversed(WORDS)) + "\n")  # other text under the same name
    result = microgpt("evaluate", "--from", trained / "run", cwd=tmp_path)
    assert result.returncode == 2 and "is not the text this run was trained on" in result.stderr, result.stderr

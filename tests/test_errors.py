"""Every mistake a user can make with train and sample gets one line that names the problem and the fix, a
non-zero exit, no traceback, and loses nothing."""
import hashlib
import json
import shutil
import struct

import pytest
from conftest import change_setting, microgpt, rewrite_header

from microgpt import checkpoint


def assert_one_line_error(result, message, code=2):
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr, result.stderr


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained run directory (the reference settings, 200 steps)."""
    where = tmp_path_factory.mktemp("trained")
    assert microgpt("train", "--steps", 200, "--out", "run", "--num-samples", 0, cwd=where).returncode == 0
    return where / "run"


def test_stream_too_short_for_one_window(tmp_path):
    (tmp_path / "tiny.txt").write_text("To be, or not to be.\n\nThat is the question.\n")
    assert_one_line_error(microgpt("train", "--data", "tiny.txt", cwd=tmp_path),
                          "too short for one window of 17 tokens")


def test_a_single_document_cannot_be_split(tmp_path):
    (tmp_path / "one.txt").write_text("alone\n")
    assert_one_line_error(microgpt("train", "--data", "one.txt", cwd=tmp_path), "needs at least 2")


def test_resume_with_other_settings_is_refused(run):
    result = microgpt("train", "--resume", run, "--lr", 0.1, "--n-embd", 32, "--n-head", 4, cwd=run.parent)
    assert_one_line_error(result, "the run was trained with other settings")
    assert "--lr 0.1 (the run has 0.01)" in result.stderr and "--n-embd 32 (the run has 16)" in result.stderr


def test_resume_from_nothing(tmp_path):
    assert_one_line_error(microgpt("train", "--resume", "nowhere", cwd=tmp_path), "no checkpoint at nowhere")


def test_out_never_overwrites_a_run(run):
    before = (run / "checkpoint.safetensors").read_bytes()
    assert_one_line_error(microgpt("train", "--out", run, cwd=run.parent), f"continue it with --resume {run}")
    assert (run / "checkpoint.safetensors").read_bytes() == before


def test_unwritable_run_directory(tmp_path):
    (tmp_path / "a_file").write_text("")
    assert_one_line_error(microgpt("train", "--out", "a_file/run", cwd=tmp_path), "cannot write the run directory")


def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    result = microgpt("train", "--lr", 1e30, "--eval-every", 1, "--out", "run", cwd=tmp_path)
    assert_one_line_error(result, "training diverged: the loss is", code=1)
    _, meta = checkpoint.load(tmp_path / "run" / "checkpoint.safetensors")
    assert f"at step {meta['step'] + 1}; the last good checkpoint is run/checkpoint.safetensors (step {meta['step']})" \
        in result.stderr


NONSENSE = {
    "negative steps": (["train", "--steps", "-5"], "--steps: must be at least 1"),
    "indivisible heads": (["train", "--n-embd", "10"], "not divisible by --n-head"),
    "warmup too long": (["train", "--steps", "10", "--warmup", "10"], "leaves no step after it"),
    "weight decay": (["train", "--weight-decay", "-1"], "must be in [0, 1)"),
    "negative temperature": (["sample", "--from", "x", "--temperature", "-1"], "must be in [0, inf)"),
    "top-p zero": (["sample", "--from", "x", "--top-p", "0"], "must be in (0, 1]"),
    "top-p above one": (["sample", "--from", "x", "--top-p", "1.5"], "must be in (0, 1]"),
}


@pytest.mark.parametrize("case", NONSENSE)
def test_nonsense_numbers(tmp_path, case):
    args, message = NONSENSE[case]
    assert_one_line_error(microgpt(*args, cwd=tmp_path), message)


def test_prompt_with_characters_never_seen_names_them(run):
    assert_one_line_error(microgpt("sample", "--from", run, "--prompt", "Zoë", cwd=run.parent), "never seen 'Zë'")


def test_prompt_longer_than_the_block(run):
    assert_one_line_error(microgpt("sample", "--from", run, "--prompt", "a" * 16, cwd=run.parent),
                          "the prompt is 16 tokens; this model sees at most 16")


def other_config(path):
    rewrite_header(path, lambda header: header["__metadata__"].update(
        settings=header["__metadata__"]["settings"].replace('"n_embd": 16', '"n_embd": 32')))


def newer_version(path):
    raw = path.read_bytes()
    path.write_bytes(raw.replace(f'"version":"{checkpoint.VERSION}"'.encode(), b'"version":"9"'))


def nan_first_weight(raw):
    start = 8 + struct.unpack("<Q", raw[:8])[0]  # wte's first value
    return raw[:start] + struct.pack("<d", float("nan")) + raw[start + 8:]


def entry(**fields):
    return lambda path: rewrite_header(path, lambda header: header["wte"].update(fields))


CHECKPOINTS = {  # (wte is the first tensor: bytes 0-3456, 27 × 16 float64)
    "missing": (lambda p: p.unlink(), "no checkpoint at"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:-100]), "is truncated"),
    "not a checkpoint": (lambda p: p.write_text("name,score\nanna,3\n" * 50), "not a safetensors file"),
    "JSON whose ninth byte is {": (lambda p: p.write_text('{"model": {"layers": 1}}'), "not a safetensors file"),
    "newer version": (newer_version,
                      f"format version 9, newer than this microgpt reads ({checkpoint.VERSION}); upgrade"),
    "another config": (other_config, "is for another model"),
    "offsets not a whole number of values": (entry(data_offsets=[0, 3455]), "wte is 3455 bytes"),
    "offsets covering fewer bytes than the shape": (entry(shape=[28, 16]), "wte is 3456 bytes, but"),
    "offsets backwards": (entry(data_offsets=[3456, 0]), "tensor wte has no valid data_offsets"),
    "F32 label over F64 bytes": (entry(dtype="F32"), "2 dimensions [27, 16] of F32 are 1728"),
    "a dtype that is a list": (entry(dtype=["F64"]), "holds wte as ['F64']"),
    "a learning rate of 401 digits": (lambda p: rewrite_header(p, lambda h: h["__metadata__"].update(
        settings=h["__metadata__"]["settings"].replace('"lr": 0.01', '"lr": 1' + "0" * 400))),
        "settings.train.lr is 1000"),
    "a header nested 100,000 deep": (lambda p: rewrite_header(p, lambda h: h.update(x=[]), deep=100_000),
                                     "not a safetensors file"),
    "a random state nested deep": (lambda p: rewrite_header(p, lambda h: h["__metadata__"].update(
        rng="[" * 900 + "]" * 900)), "its metadata field rng is"),
    "a million layers": (lambda p: rewrite_header(p, lambda h: h["__metadata__"].update(
        settings=h["__metadata__"]["settings"].replace('"n_layer": 1', '"n_layer": 1000000'))),
        "want 1000000 layers, it holds 27 tensors"),
    "a NaN weight": (lambda p: p.write_bytes(nan_first_weight(p.read_bytes())),
                     "tensor wte holds a value that is not finite"),
    "settings without model": (lambda p: rewrite_header(p, change_setting("model")),
                               "its metadata field settings.model is missing"),
    "settings without model.n_head": (lambda p: rewrite_header(p, change_setting("model", "n_head")),
                                      "its metadata field settings.model.n_head is missing"),
}


@pytest.mark.parametrize("command", ["sample", "train --resume"])
@pytest.mark.parametrize("case", CHECKPOINTS)
def test_unusable_checkpoints(run, tmp_path, case, command):
    damage, message = CHECKPOINTS[case]
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    damage(copy / "checkpoint.safetensors")
    args = ("sample", "--from", "run/checkpoint.safetensors") if command == "sample" else ("train", "--resume", "run")
    assert_one_line_error(microgpt(*args, cwd=tmp_path), message)


def test_resume_refuses_data_that_changed(tmp_path):
    (tmp_path / "words.txt").write_text("anna\nbob\nclara\ndave\n")
    assert microgpt("train", "--data", "words.txt", "--steps", 4, "--out", "run", cwd=tmp_path).returncode == 0
    (tmp_path / "words.txt").write_text("anna\nbob\nclara\ndave\nzed\n")
    assert_one_line_error(microgpt("train", "--resume", "run", cwd=tmp_path), "has changed since this run started")


def test_resume_keeps_its_directory(run):
    assert_one_line_error(microgpt("train", "--resume", run, "--out", "elsewhere", cwd=run.parent),
                          "continues in its own directory")


def test_tokenize_save_to_nowhere(run):
    assert_one_line_error(microgpt("tokenize", "--from", run, "ab", "--save", "/no/such/dir/t.txt", cwd=run.parent),
                          "cannot write /no/such/dir/t.txt")


INTRODUCED = {2: ["evaluation_due"], 3: ["elapsed", "settings.ablate"], 4: ["settings.train.dropout"]}  # by version


def as_older(version, keep=None):
    """A header rewrite that makes a checkpoint one of format `version`: without the fields later versions introduced,
    but `keep` (a field's dotted name, as the error names it) if given. (Its steps become 210, so that a resume has
    steps to take, and saves.)"""
    def rewrite(header):
        meta = header["__metadata__"]
        fields = {**meta, "settings": json.loads(meta["settings"])}  # (settings is JSON inside the header's JSON)
        for later in range(version + 1, checkpoint.VERSION + 1):
            for name in INTRODUCED[later]:
                if name != keep:
                    *parents, field = name.split(".")
                    holder = fields
                    for parent in parents:
                        holder = holder[parent]
                    del holder[field]
        fields["settings"]["train"]["steps"] = 210
        header["__metadata__"] = {**fields, "settings": json.dumps(fields["settings"]), "version": str(version)}
    return rewrite


@pytest.mark.parametrize("version", [1, 2, 3])
def test_an_older_checkpoint_is_still_read(run, tmp_path, version):
    """Format version 1 had no evaluation_due (it never cut an evaluation short): read as false, not refused; versions
    1 and 2 had no ablations (read as none) and kept no time (read as unknown); versions 1 to 3 had no dropout (read
    as 0)."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    rewrite_header(copy / "checkpoint.safetensors", as_older(version))
    result = microgpt("sample", "--from", "run/checkpoint.safetensors", "--num-samples", 2, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("run/checkpoint.safetensors: step 200"), result.stderr
    resumed = microgpt("train", "--resume", "run", "--num-samples", 0, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    newer = checkpoint.load(copy / "checkpoint.safetensors")[1]  # (resaved as version 4, its time unknown before 3)
    assert newer["version"] == 4 and newer["settings"]["train"]["dropout"] == 0.0
    assert (newer["elapsed"] is None) == (version < 3)
    rewrite_header(copy / "checkpoint.safetensors", lambda header: header["__metadata__"].pop("evaluation_due"))
    assert_one_line_error(microgpt("sample", "--from", copy / "checkpoint.safetensors", cwd=tmp_path),
                          "evaluation_due is missing")  # a version 4 file needs it


@pytest.mark.parametrize("version, field", [(1, "evaluation_due"), (2, "elapsed"), (2, "settings.ablate"),
                                            (3, "settings.train.dropout"), (1, "settings.ablate"),
                                            (2, "settings.train.dropout")])
def test_an_older_checkpoint_with_a_field_of_a_later_version_is_refused(run, tmp_path, version, field):
    """No version wrote such a file: the field is not overwritten with the value its version implies, but named."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    rewrite_header(copy / "checkpoint.safetensors", as_older(version, keep=field))
    assert_one_line_error(microgpt("sample", "--from", "run/checkpoint.safetensors", cwd=tmp_path),
                          f"it holds {field}, which its format version {version} did not have")


def test_resume_of_a_run_that_read_a_byte_order_mark_as_a_character(tmp_path):
    """Older versions made the BOM a token and took the checksum with it: such a run cannot continue exactly."""
    (tmp_path / "words.txt").write_text("anna\nbob\nclara\ndave\n", encoding="utf-8-sig")
    assert microgpt("train", "--data", "words.txt", "--steps", 4, "--out", "run", cwd=tmp_path).returncode == 0
    old_checksum = hashlib.sha256("\ufeffanna\nbob\nclara\ndave\n".encode()).hexdigest()
    rewrite_header(tmp_path / "run" / "checkpoint.safetensors",
                   lambda header: header["__metadata__"].update(data_sha256=json.dumps(old_checksum)))
    assert_one_line_error(microgpt("train", "--resume", "run", cwd=tmp_path),
                          "read the byte-order mark at the start of words.txt as a character")

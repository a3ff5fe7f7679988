"""The everyday workflow: a run directory with checkpoints and a log, held-out evaluation, a resume that
continues bit for bit (after Ctrl-C too), and sampling from what was saved."""
import io
import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import ROOT, microgpt, run_python
from test_engines import FAST

from microgpt import checkpoint
from microgpt.config import RunSettings, TrainConfig
from microgpt.train import READ_EVERY, Trainer


def small_settings(data, steps=12, **train):
    return RunSettings(data=str(data), model=dict(n_layer=2, n_embd=8, n_head=2, block_size=8),
                       train=TrainConfig(steps=steps, batch_size=3, lr=0.01, **train), eval_every=5, log_every=5)


@pytest.fixture
def words(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("\n".join(["anna", "bob", "clara", "dave", "eve", "frank", "gina", "hal", "ivy", "jo", "kim",
                               "lena", "max"]))
    return path


@pytest.fixture
def prose(tmp_path):
    path = tmp_path / "prose.txt"
    path.write_text("It was the best of times, it was the worst of times.\n\n" * 12)
    return path


def run_steps(settings, out_dir, stop_after=None, resume=None):
    """A Trainer run in out_dir, with a Ctrl-C delivered right after step `stop_after`."""
    trainer = Trainer(settings, str(out_dir), stream=io.StringIO(), resume_from=resume)
    step = trainer.train_step

    def step_then_maybe_stop(progress):
        step(progress)
        if trainer.step == stop_after:
            trainer.requests.note(signal.SIGINT, None)  # what the signal handler does
    trainer.train_step = step_then_maybe_stop
    trainer.run()
    return trainer


def test_processes_settle_a_stop_every_few_steps_and_after_an_evaluation_cut_short(words, tmp_path):
    # under torchrun asking every rank is a wait for every GPU: between readings they go on, unless a signal cut an
    # evaluation short (the state must be saved then) or the run is at its end
    trainer = Trainer(small_settings(words, steps=25), str(tmp_path), stream=io.StringIO())
    trainer.engine.world = 2  # (as under torchrun: the engine's should_stop is then every rank's question)
    trainer.requests.note(signal.SIGINT, None)
    for step, evaluation_due, stops in ((5, False, False), (READ_EVERY, False, True), (5, True, True),
                                        (25, False, True)):
        trainer.step, trainer.evaluation_due = step, evaluation_due
        assert trainer._stopping() == stops, (step, evaluation_due)


@pytest.mark.parametrize("data", ["words", "prose"])
@pytest.mark.parametrize("engine", ["scalar", *FAST])
def test_interrupted_and_resumed_run_ends_with_the_same_weights_bit_for_bit(engine, data, request, tmp_path):
    settings = small_settings(request.getfixturevalue(data), weight_decay=0.1, grad_clip=0.5, warmup=2,
                              schedule="cosine")
    settings = RunSettings(**{**settings.__dict__, "engine": engine})
    whole = run_steps(settings, tmp_path / "whole")
    assert run_steps(settings, tmp_path / "parts", stop_after=7).step == 7
    resumed = run_steps(settings, tmp_path / "parts", resume=checkpoint.load(tmp_path / "parts"))
    assert resumed.step == whole.step == 12
    for a, b in zip((whole.engine.weights(), *whole.engine.moments()),
                    (resumed.engine.weights(), *resumed.engine.moments())):
        assert list(a) == list(b)  # weights and Adam moments, exactly
    assert list(whole.samples(3, 1.0)) == list(resumed.samples(3, 1.0))  # and the random stream too


@pytest.mark.parametrize("engine", [p for p in FAST if p.values[0] != "python"])
def test_a_float32_run_resumes_bit_for_bit_from_its_float32_checkpoint(engine, words, tmp_path):
    settings = RunSettings(**{**small_settings(words, grad_clip=0.5).__dict__, "engine": engine, "dtype": "float32"})
    whole = run_steps(settings, tmp_path / "whole")
    run_steps(settings, tmp_path / "parts", stop_after=7)
    tensors, _ = checkpoint.load(tmp_path / "parts")
    assert {values.typecode for _, values in tensors.values()} == {"f"}  # saved from the float32 arrays' bytes
    resumed = run_steps(settings, tmp_path / "parts", resume=checkpoint.load(tmp_path / "parts"))
    for a, b in zip((whole.engine.weights(), *whole.engine.moments()),
                    (resumed.engine.weights(), *resumed.engine.moments())):
        assert a.dtype == b.dtype == "float32" and list(a) == list(b)


def test_run_directory_holds_checkpoints_and_a_jsonl_log(tmp_path, words):
    result = microgpt("train", "--data", words, "--steps", 10, "--eval-every", 5, "--log-every", 2, "--out", "run",
                 "--num-samples", 2, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "lines (one short item per line, no blank lines); 12 documents to train on, 1 held out" in result.stdout
    assert sorted(os.listdir(tmp_path / "run")) == ["best.safetensors", "checkpoint.safetensors", "log.jsonl"]
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train_loss" in r]
    assert [r["step"] for r in steps] == [2, 4, 6, 8, 10]
    assert set(steps[0]) >= {"step", "train_loss", "train_loss_smooth", "lr", "ms_per_step", "tokens_per_s"}
    assert [r["step"] for r in records if "held_out_loss" in r] == [5, 10]


def test_ctrl_c_saves_and_resume_finishes_the_same_run(tmp_path):
    common = ("--engine", "python", "--steps", 400, "--log-every", 1, "--num-samples", 0)
    whole = microgpt("train", *common, "--out", "whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen([sys.executable, "-m", "microgpt", "train", *map(str, common), "--out", "parts"],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:  # wait until training has started
        if line.startswith("step   3/400"):
            break
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "interrupted after step" in out and "resume with: python -m microgpt train --resume parts" in out
    _, meta = checkpoint.load(tmp_path / "parts" / "checkpoint.safetensors")
    assert 3 <= meta["step"] < 400
    resumed = microgpt("train", "--resume", "parts", "--num-samples", 0, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after step {meta['step']}" in resumed.stdout
    a, _ = checkpoint.load(tmp_path / "whole" / "checkpoint.safetensors")
    b, _ = checkpoint.load(tmp_path / "parts" / "checkpoint.safetensors")
    assert all(list(a[name][1]) == list(b[name][1]) for name in a)


def test_sample_with_a_prompt_and_marks_copies(tmp_path):
    assert microgpt("train", "--out", "run", "--num-samples", 0, cwd=tmp_path).returncode == 0
    result = microgpt("sample", "--from", "run", "--prompt", "ma", "--num-samples", 10, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("run/best.safetensors: step 1000, held-out loss")
    assert all(line[5:].startswith("ma") for line in lines[1:])
    assert any(line.endswith("(a training document)") for line in lines[1:])
    again = microgpt("sample", "--from", "run", "--prompt", "ma", "--num-samples", 10, cwd=tmp_path)
    assert again.stdout == result.stdout  # same seed, same samples
    greedy = [microgpt("sample", "--from", "run", *flags, "--num-samples", 2, cwd=tmp_path).stdout.splitlines()[1:]
              for flags in (["--temperature", 0], ["--top-k", 1], ["--top-p", 0.001])]
    assert greedy[0] == greedy[1] == greedy[2] and greedy[0][0][5:] == greedy[0][1][5:]


def test_stream_data_trains_on_windows_and_samples_running_text(tmp_path, prose):
    result = microgpt("train", "--data", prose, "--steps", 5, "--block-size", 16, "--out", "run", "--num-samples", 1,
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "stream (it has blank lines, so it reads as running text)" in result.stdout
    assert "--- 1" in result.stdout
    sample = microgpt("sample", "--from", "run", "--prompt", "It was", "--max-new-tokens", 40, "--num-samples", 1,
                 cwd=tmp_path)
    assert sample.returncode == 0 and sample.stdout.splitlines()[2].startswith("It was")


def test_presets_run(tmp_path):
    for preset in ("names", "shakespeare"):
        result = microgpt("train", "--preset", preset, "--steps", 2, "--warmup", 1, "--eval-every", 2,
                     "--num-samples", 0, "--out", preset, cwd=tmp_path)
        assert result.returncode == 0, result.stderr


def test_the_gpu_preset_is_nanogpts_recipe_and_run_figures_reads_its_times(tmp_path, prose):
    # its size, schedule and dropout, here on a short text and a short block in float32 (numpy has no bfloat16)
    result = microgpt("train", "--preset", "shakespeare-gpu", "--data", prose, "--engine", "numpy", "--dtype",
                      "float32", "--block-size", 16, "--batch-size", 2, "--steps", 4, "--warmup", 1, "--eval-every", 2,
                      "--num-samples", 0, "--out", "run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "model: n_layer 6, n_embd 384, n_head 6, block_size 16" in result.stdout
    assert "lr 0.001 (cosine, warmup 1), weight decay 0.1, grad clip 1.0, dropout 0.2" in result.stdout
    figures = run_python(ROOT / "scripts" / "run_figures.py", "run", 99, 0.01, cwd=tmp_path)
    assert figures.returncode == 0, figures.stderr
    held_out = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
                if "held_out_loss" in line]
    lines = figures.stdout.splitlines()
    assert lines[:2] == ["run: run, step 4 of 4", f"wall time: {held_out[-1]['elapsed']:.1f} s"]
    assert lines[2:5] == [f"time to held-out 99.0: {held_out[0]['elapsed']:.1f} s",
                          "time to held-out 0.01: not reached",
                          f"best held-out loss: {min(r['held_out_loss'] for r in held_out):.4f}"]


def test_a_float32_run_samples_on_every_engine(tmp_path):
    assert microgpt("train", "--dtype", "float32", "--engine", "numpy", "--steps", 50, "--out", "run",
               "--num-samples", 0, cwd=tmp_path).returncode == 0
    outputs = [microgpt("sample", "--from", "run", "--engine", engine, "--temperature", 0, "--num-samples", 1,
                   cwd=tmp_path) for engine in ("python", "numpy")]
    assert all(out.returncode == 0 for out in outputs), [out.stderr for out in outputs]
    assert outputs[0].stdout.splitlines()[1] == outputs[1].stdout.splitlines()[1]  # float32 weights, same argmax

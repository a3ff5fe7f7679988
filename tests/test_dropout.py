"""Dropout: the masks are one function of where an activation is, so that, with the same masks, numpy and torch
compute the python engine's numbers at 1e-12 in float64 (and torchrun's ranks those of one process); the python
engine's gradients are the loss's under fixed masks; a trained model is used without dropout (evaluation, sampling,
trace); a resumed run draws the masks it would have drawn; the options are checked."""
import json
import random
import shutil

import pytest
from conftest import microgpt, rewrite_header
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engines import FAST, max_relative_difference, models_and_batches, worst_tensor
from test_workflow import run_steps, small_settings

from microgpt import atomic, checkpoint, engines
from microgpt.config import RunSettings
from microgpt.dropout import ATTENTION_WEIGHTS, EMBEDDING, Dropout, kept, mix32
from microgpt.initialisation import reference_weights
from microgpt.layout import segments

ARRAY_ENGINES = [p for p in FAST if p.values[0] != "python"]
CFG = atomic.GPTConfig(vocab_size=6, block_size=6, n_layer=2, n_embd=8, n_head=2)
BATCH = [[5, 0, 3, 3, 1, 2, 4], [5, 2, 4, 5], [5, 1, 5]]


def test_the_hash_is_a_bijection_and_the_same_on_ints_and_arrays():
    inputs = [0, 1, 2, 3, 2**31, 2**32 - 1, *random.Random(0).sample(range(2**32), 1000)]
    outputs = [mix32(x) for x in inputs]
    assert len(set(outputs)) == len(inputs) and all(0 <= y < 2**32 for y in outputs)
    np = pytest.importorskip("numpy")
    assert mix32(np.array(inputs, dtype=np.int64)).tolist() == outputs  # (products past 64 bits keep their low 32)
    torch = pytest.importorskip("torch")
    assert mix32(torch.tensor(inputs)).tolist() == outputs


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_a_share_p_of_activations_is_dropped_and_each_place_has_its_own(p):
    dropout, n = Dropout(p, seed=42, step=3), 40_000

    def mask(key, document=0):
        return [kept(p, key, document, coordinate) for coordinate in range(n)]

    def agreement(a, b):
        return sum(x == y for x, y in zip(a, b)) / n
    masks = {(place, layer): mask(dropout.key(place, layer)) for place in range(4) for layer in range(3)}
    masks["another document"] = mask(dropout.key(EMBEDDING), document=1)
    masks["another step"] = mask(Dropout(p, 42, 4).key(EMBEDDING))
    masks["another seed"] = mask(Dropout(p, 43, 3).key(EMBEDDING))
    for found in masks.values():  # binomial: the standard deviation of the kept share is below 0.0025
        assert abs(sum(found) / n - (1 - p)) < 0.0125
    chance = p * p + (1 - p) ** 2  # how often two independent masks agree
    assert max(agreement(a, b) for a in masks.values() for b in masks.values() if a is not b) < chance + 0.0125
    assert mask(dropout.key(EMBEDDING)) == masks[EMBEDDING, 0]  # the same place, step and seed: the same mask


# (causal-mask: attention that must hide numpy's and torch's padding; the others change what the masks multiply)
@pytest.mark.parametrize("ablations", [(), ("causal-mask",), ("rmsnorm", "position", "relu")], ids=str)
@pytest.mark.parametrize("name", [*ARRAY_ENGINES, pytest.param("torch padded", marks=ARRAY_ENGINES[-1].marks)])
@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=models_and_batches(), p=st.sampled_from([0.1, 0.5]), step=st.integers(0, 10**6))
def test_every_engine_drops_the_same_activations_and_computes_the_python_engines_numbers(name, ablations, case, p,
                                                                                          step):
    cfg, batch, seed = case
    weights, dropout = reference_weights(cfg, random.Random(seed)), Dropout(p, seed, step)
    reference = engines.create("python", cfg, weights, ablations=ablations)
    engine = engines.create(name.split()[0], cfg, weights, ablations=ablations)
    if name == "torch padded":
        engine.pad_to_block = True  # what --compile does: every batch padded to the block
    want, got = reference.loss_and_grads(batch, dropout), engine.loss_and_grads(batch, dropout)
    assert abs(got - want) <= 1e-12 * max(abs(want), 1.0), f"loss {got!r} vs python {want!r}"
    tensor, difference = worst_tensor(engine.gradients(), reference.gradients(), cfg)
    assert difference <= 1e-12, f"{tensor} gradient differs by {difference:.2e}"
    seq = batch[-1][:cfg.block_size]  # and the forward pass after training is the model's, without dropout
    assert max_relative_difference(engine.forward(seq, engine.new_cache()),
                                   reference.forward(seq, reference.new_cache())) <= 1e-12


def test_the_fused_kernels_dropout_repeats_itself_for_the_same_step():
    # SDPA draws the attention weights' masks from torch's generator, seeded from the step's key: a resume repeats
    # them (not the other engines' masks: its loss differs from the spelled-out attention's)
    pytest.importorskip("torch")
    weights = reference_weights(CFG, random.Random(5), std=0.3)
    fused, manual = (engines.create("torch", CFG, weights, attention=a) for a in ("sdpa", "manual"))
    losses = [fused.loss_and_grads(BATCH, Dropout(0.5, 1, step)) for step in (3, 4, 3)]
    assert losses[0] == losses[2] != losses[1]
    assert manual.loss_and_grads(BATCH, Dropout(0.5, 1, 3)) != losses[0]


@pytest.mark.parametrize("name", FAST)
def test_dropout_changes_the_loss_and_p_0_is_no_dropout(name):
    weights = reference_weights(CFG, random.Random(5), std=0.3)
    losses = {p: engines.create(name, CFG, weights).loss_and_grads(BATCH, Dropout(p, 1, 0)) for p in (0.0, 0.5)}
    assert losses[0.5] != losses[0.0] == engines.create(name, CFG, weights).loss(BATCH)


@pytest.mark.parametrize("ablations", [(), ("rmsnorm", "position"), ("causal-mask",), ("attention",), ("mlp",)],
                         ids=str)
def test_the_python_engines_gradient_is_the_losss_under_fixed_masks(ablations):
    # the masks are a function of the step, not of the weights: with them fixed, the loss is a smooth function whose
    # central differences (h = 1e-6) the gradient must match
    dropout, h = Dropout(0.3, 7, 2), 1e-6
    weights = reference_weights(CFG, random.Random(5), std=0.3)
    engine = engines.create("python", CFG, weights, ablations=ablations)
    engine.loss_and_grads(BATCH, dropout)
    grads, rng = engine.gradients(), random.Random(0)
    for name, (start, (rows, cols)) in segments(CFG).items():
        for i in rng.sample(range(start, start + rows * cols), 3):
            losses = [engines.create("python", CFG, [*weights[:i], shifted, *weights[i + 1:]], ablations=ablations)
                      .loss_and_grads(BATCH, dropout) for shifted in (weights[i] + h, weights[i] - h)]
            numerical = (losses[0] - losses[1]) / (2 * h)
            assert abs(grads[i] - numerical) <= 1e-6 * max(1.0, abs(numerical)), (name, grads[i], numerical)


def test_a_documents_masks_do_not_depend_on_the_batch_around_it():
    # the same document first in two batches, alone and beside a longer one (numpy's attention pads to the longest):
    # the same masks
    dropout, weights = Dropout(0.5, 3, 9), reference_weights(CFG, random.Random(2))
    numpy_engine = pytest.importorskip("microgpt.engines.numpy", reason="no numpy")
    engine = engines.create("numpy", CFG, weights)
    document = BATCH[1][:-1]
    short = engine._forward(numpy_engine.Rows.of([document]), dropout=dropout).masks
    long = engine._forward(numpy_engine.Rows.of([document, [*document, 0, 0, 0]]), dropout=dropout).masks
    T = len(document)
    assert (short[EMBEDDING, 0] == long[EMBEDDING, 0][:T]).all()  # (rows (N, C): the document's come first)
    assert (short[ATTENTION_WEIGHTS, 1][0] == long[ATTENTION_WEIGHTS, 1][0][:, :T, :T]).all()


@pytest.mark.parametrize("engine", FAST)
def test_an_interrupted_run_with_dropout_resumes_bit_for_bit(engine, tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("\n".join(["anna", "bob", "clara", "dave", "eve", "frank", "gina", "hal", "ivy", "jo"]))
    settings = small_settings(words, dropout=0.2)
    settings = RunSettings(**{**settings.__dict__, "engine": engine})
    whole = run_steps(settings, tmp_path / "whole")
    assert run_steps(settings, tmp_path / "parts", stop_after=7).step == 7
    resumed = run_steps(settings, tmp_path / "parts", resume=checkpoint.load(tmp_path / "parts"))
    for a, b in zip((whole.engine.weights(), *whole.engine.moments()),
                    (resumed.engine.weights(), *resumed.engine.moments())):
        assert list(a) == list(b)
    without = run_steps(RunSettings(**{**settings.__dict__, "train": small_settings(words).train}), tmp_path / "off")
    assert list(without.engine.weights()) != list(whole.engine.weights())  # (dropout did something)


def test_evaluation_sampling_and_trace_are_the_same_whatever_dropout_the_run_had(tmp_path):
    assert microgpt("train", "--dropout", "0.3", "--steps", 30, "--eval-every", 30, "--num-samples", 0,
                    "--out", "run", cwd=tmp_path).returncode == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    shutil.copytree(tmp_path / "run", tmp_path / "relabelled")

    def without_dropout(header):
        settings = json.loads(header["__metadata__"]["settings"])
        assert settings["train"]["dropout"] == 0.3
        settings["train"]["dropout"] = 0.0
        header["__metadata__"]["settings"] = json.dumps(settings)
    rewrite_header(tmp_path / "relabelled" / "checkpoint.safetensors", without_dropout)
    for command in (["evaluate"], ["sample", "--num-samples", 5, "--seed", 1], ["trace", "--prompt", "an"],
                    ["attention", "--prompt", "an"]):
        outputs = [microgpt(*command, "--from", run, cwd=tmp_path) for run in ("run", "relabelled")]
        assert outputs[0].returncode == 0, outputs[0].stderr
        assert outputs[0].stdout.replace("run", "") == outputs[1].stdout.replace("relabelled", ""), command
    held_out = microgpt("evaluate", "--from", "run", cwd=tmp_path).stdout
    assert f"{log[-1]['held_out_loss']:.4f}" in held_out  # the loss train measured, without dropout


def test_dropout_options_are_checked(tmp_path):
    def error(*args):
        result = microgpt("train", "--steps", 2, "--num-samples", 0, *args, cwd=tmp_path)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) <= 3, result.stderr
        return result.stderr
    assert "--dropout: must be in [0, 1), got 1" in error("--dropout", "1")
    assert "--dropout: must be in [0, 1), got -0.1" in error("--dropout", "-0.1")
    assert "the scalar engine is the atomic file, which has no dropout" in error("--engine", "scalar", "--dropout",
                                                                                   "0.1")
    assert microgpt("train", "--steps", 2, "--num-samples", 0, "--out", "run", cwd=tmp_path).returncode == 0
    resumed = microgpt("train", "--resume", "run", "--dropout", "0.1", cwd=tmp_path)
    assert resumed.returncode == 2 and "--dropout 0.1 (the run has 0.0)" in resumed.stderr

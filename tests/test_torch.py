"""The torch engine beyond what every engine proves (tests/test_engines.py holds it to the reference in
float64): float32 and the fused attention kernel, padded batches, and DistributedDataParallel through
torchrun on the CPU (gloo)."""
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys

import pytest
from conftest import ROOT, microgpt, run_python
from test_engines import worst_tensor
from test_workflow import small_settings

from microgpt import atomic, checkpoint
from microgpt.config import RunSettings
from microgpt.initialisation import reference_weights
from microgpt.layout import segments
from microgpt.progress import Progress
from microgpt.train import READ_EVERY, Trainer, TrainingDiverged

torch_engine = pytest.importorskip("microgpt.engines.torch", reason="the torch engine needs torch (CI installs it)")

CFG = atomic.GPTConfig(vocab_size=7, block_size=8, n_layer=2, n_embd=16, n_head=4)
BATCH = [[6, 0, 1, 2, 6], [6, 3, 4, 5, 1, 2, 0, 1, 3, 4, 6], [6, 2, 6]]


def engine(**options):
    return torch_engine.Engine(CFG, reference_weights(CFG, random.Random(1)), **options)


def loss_and_grads(**options):
    model = engine(**options)
    return model.loss_and_grads(BATCH), model.gradients().copy()


def assert_close(got, want, tolerance):
    (loss, grads), (want_loss, want_grads) = got, want
    assert abs(loss - want_loss) <= tolerance * abs(want_loss)
    tensor, worst = worst_tensor(grads, want_grads, CFG)
    assert worst <= tolerance, f"{tensor} gradients differ by {worst:.2e}"


def test_float32_agrees_with_float64():
    # float32 rounds at 6e-8; a forward and backward pass stacks a few hundred roundings, some amplified
    # by softmax and rmsnorm, so 1e-4 of each tensor's largest entry is a safe bound, and a wrong formula
    # would be off by far more.
    assert_close(loss_and_grads(dtype="float32"), loss_and_grads(), 1e-4)


def test_the_fused_adamw_kernel_is_the_references_arithmetic():
    # from the same weights, gradients and moments, in float64, step after step: the bias corrections counted from
    # the step given, the weight decay, a learning rate that changes, and an eps large enough to matter where it is
    torch = torch_engine.torch
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(1000, generator=generator, dtype=torch.float64)
    by_hand = (weights, torch.zeros_like(weights), torch.zeros_like(weights))  # (p, m, v)
    fused = tuple(tensor.clone() for tensor in by_hand)
    for step in range(5):
        grads = torch.randn(1000, generator=generator, dtype=torch.float64) * 10.0 ** -step
        settings = dict(step=step, lr_t=0.01 * (1 - step / 5), beta1=0.9, beta2=0.95, eps=1e-3, weight_decay=0.1)
        for update, (p, m, v) in ((torch_engine.adam_update, by_hand), (torch_engine.fused_adamw_update, fused)):
            update(p, grads, m, v, **settings)
        for got, want in zip(fused, by_hand):
            assert (got - want).abs().max() <= 1e-12 * want.abs().max(), step


def test_float32_weights_take_the_fused_kernel(monkeypatch):
    # float64 keeps the reference's order of operations; float32 takes fused_adamw_update: the same steps, to float32
    # rounding, through every engine method between them
    fused = engine(dtype="float32")
    monkeypatch.setattr(torch_engine.Engine, "_fused", property(lambda self: False))
    by_hand = engine(dtype="float32")
    for step in range(4):
        for model in (fused, by_hand):
            model.loss_and_grads(BATCH)
            model.clip_grads(1.0)
            model.adam_step(step, lr_t=0.01 * (1 - step / 4), beta1=0.9, weight_decay=0.1)
        for name in ("p", "m", "v"):
            got, want = getattr(fused, name), getattr(by_hand, name)
            assert (got - want).abs().max() <= 1e-5 * want.abs().max(), (step, name)
    monkeypatch.undo()
    assert fused._fused and not engine()._fused


def test_fused_attention_kernel_computes_the_same_attention():
    # the same mathematics in another order of operations: float64 rounding only
    assert_close(loss_and_grads(attention="sdpa"), loss_and_grads(), 1e-12)


def test_the_fused_kernel_behind_a_key_value_cache_sees_every_key_before_each_query():
    # a whole sequence takes the kernel's own causal flag, which aligns the mask to the first key; queries after a
    # cache must see the cached keys as well, through the mask spelled out
    fused, manual = engine(attention="sdpa"), engine()
    tokens = [5, 0, 3, 3, 1, 2, 4]
    cache = fused.new_cache()
    one_by_one = [fused.forward([t], cache)[0] for t in tokens[:2]] + fused.forward(tokens[2:], cache)
    want = manual.forward(tokens, manual.new_cache())
    for rows in (one_by_one, fused.forward(tokens, fused.new_cache())):
        assert max(abs(a - b) for got, row in zip(rows, want) for a, b in zip(got, row)) <= 1e-12


@pytest.mark.parametrize("ablations", [("attn-scale",), ("causal-mask",), ("attn-scale", "causal-mask")],
                         ids="+".join)
def test_fused_attention_kernel_computes_the_same_attention_without_its_scale_or_mask(ablations):
    # without the mask the kernel must hide the padding of the shorter documents (attn_mask from the targets)
    assert_close(loss_and_grads(attention="sdpa", ablations=ablations), loss_and_grads(ablations=ablations), 1e-12)


@pytest.mark.parametrize("attention", ["manual", "sdpa"])
def test_padding_to_the_block_changes_nothing(attention):
    # what --compile does (one shape for every batch): the padding is masked out of the loss, and causal
    # attention keeps it from every real token, so the loss and every gradient are the same
    padded = engine(attention=attention)
    padded.pad_to_block = True
    assert_close((padded.loss_and_grads(BATCH), padded.gradients()), loss_and_grads(), 1e-13)


def test_batch_is_the_token_weighted_mean_of_its_documents():
    model = engine()
    counts = [min(CFG.block_size, len(doc) - 1) for doc in BATCH]  # the long one is cut to the block
    parts = [(model.loss_and_grads([doc]), model.gradients().copy()) for doc in BATCH]
    total = sum(counts)
    loss = sum(n * part_loss for n, (part_loss, _) in zip(counts, parts)) / total
    grads = sum(n * part_grads for n, (_, part_grads) in zip(counts, parts)) / total
    assert_close(loss_and_grads(), (loss, grads), 1e-13)


def test_parameters_and_their_gradients_are_views_into_the_flat_tensors():
    # autograd adds each parameter's gradient into its .grad, a view into the flat gradients, which Adam and the
    # checkpoints read whole; a parameter is a view into the flat weights, which Adam updates in place
    model = engine()
    model.loss_and_grads(BATCH)
    grads, weights = model.gradients(), model.weights()
    start, (rows, cols) = segments(CFG)["layer1.mlp_fc1"]
    parameter = dict(model.model.named_parameters())["layer1.mlp_fc1"]
    assert parameter.grad.flatten().tolist() == grads[start:start + rows * cols].tolist() and grads.any()
    model.adam_step(0, 0.01)
    assert parameter.detach().flatten().tolist() == weights[start:start + rows * cols].tolist()


@pytest.mark.parametrize("attention", ["manual", "sdpa"])
def test_the_traced_forward_pass_is_the_models(attention):
    # record() walks GPT.forward's steps again: it must end where forward ends
    model = engine(attention=attention)
    tokens = [6, 0, 1, 2, 3, 4]
    logits = model.forward(tokens, model.new_cache())
    shape, traced = model.flat(model.record(tokens).logits)
    assert shape == (6, CFG.vocab_size)
    assert max(abs(a - b) for a, b in zip(traced.tolist(), (x for row in logits for x in row))) <= 1e-12


# -- the GPU loop, on the CPU: results left unread as on a GPU (which a CPU skips: its results are ready at once) ----


def make_lazy_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch_engine.Engine, "_lazy", property(lambda self: self.lazy_results))


@pytest.fixture
def lazy_on_the_cpu(monkeypatch):
    make_lazy_on_the_cpu(monkeypatch)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_results_left_unread_are_the_numbers_read_at_once(lazy_on_the_cpu, dtype):
    read, unread = engine(dtype=dtype), engine(dtype=dtype)
    unread.lazy_results = True
    for max_norm in (1e-3, 1e3):  # clipped, and not
        loss = unread.loss_and_grads(BATCH)
        assert isinstance(loss, torch_engine.torch.Tensor) and float(loss) == read.loss_and_grads(BATCH)
        norm = unread.clip_grads(max_norm)
        assert isinstance(norm, torch_engine.torch.Tensor) and float(norm) == read.clip_grads(max_norm)
        assert torch_engine.torch.equal(unread.g, read.g)


def torch_run(out_dir, log_every=1000, device="cpu", dtype="float64", attention=None, **train):
    """A Trainer of 25 steps (on the CPU unless told), logging every `log_every` steps (and at the last)."""
    words = out_dir.parent / "words.txt"
    words.write_text("\n".join(["anna", "bob", "clara", "dave", "eve", "frank", "gina", "hal", "ivy", "jo"]))
    settings = small_settings(words, steps=25, grad_clip=0.5, **train)
    options = {"device": device, **({"attention": attention} if attention else {})}
    settings = RunSettings(**{**settings.__dict__, "engine": "torch", "dtype": dtype, "engine_options": options,
                              "log_every": log_every, "eval_every": 1000})
    return Trainer(settings, str(out_dir), stream=io.StringIO())


def test_a_run_that_reads_its_losses_every_few_steps_is_the_same_run(tmp_path, monkeypatch):
    at_once = torch_run(tmp_path / "at_once")
    at_once.run()
    make_lazy_on_the_cpu(monkeypatch)
    lazy, readings = torch_run(tmp_path / "lazy"), []
    read = lazy._read_losses
    lazy._read_losses = lambda progress: readings.append(len(lazy.unread)) or read(progress)
    lazy.run()
    assert readings == [READ_EVERY, READ_EVERY, 4, 1]  # (the 25th is logged: the 4 before it are read, then it)
    assert (lazy.smoothed, lazy.best) == (at_once.smoothed, at_once.best)
    assert list(lazy.engine.weights()) == list(at_once.engine.weights())


@pytest.mark.parametrize(("log_every", "stopped_after"), [(1000, 2 * READ_EVERY), (15, 14)],
                         ids=["at a reading", "at a logged step"])  # (a logged step reads the steps before it first)
def test_a_loss_that_stops_being_finite_between_readings_stops_the_run_naming_its_step(tmp_path, lazy_on_the_cpu,
                                                                                        log_every, stopped_after):
    trainer = torch_run(tmp_path / "run", log_every)
    real, calls = trainer.engine.loss_and_grads, []

    def nan_from_step_13(batch, dropout=None):
        calls.append(batch)
        return real(batch, dropout) * (float("nan") if len(calls) >= 13 else 1.0)
    trainer.engine.loss_and_grads = nan_from_step_13
    with pytest.raises(TrainingDiverged, match="the loss is nan at step 13; no checkpoint was saved yet"):
        trainer.run()
    assert trainer.step == stopped_after


@pytest.mark.skipif(not torch_engine.torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)")
@pytest.mark.parametrize("attention", ["manual", "sdpa"])
def test_an_ordinary_step_on_a_gpu_never_waits_for_the_gpu(tmp_path, attention):
    """Steps that neither read their losses, log nor evaluate only queue work: torch raises at any wait for the GPU
    that it watches for (a result read back, a blocking copy to it, a synchronisation)."""
    torch = torch_engine.torch
    trainer = torch_run(tmp_path / "run", device="cuda", dtype="bfloat16", attention=attention, dropout=0.2)
    progress = Progress(25, io.StringIO(), 1000)
    trainer.train_step(progress)  # (the first step sets CUDA up: its libraries, the allocator's pools)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(READ_EVERY - 2):  # steps 2 to 9: the 10th reads the losses
            trainer.train_step(progress)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert trainer.step == READ_EVERY - 1 and len(trainer.unread) == READ_EVERY - 1


TORCHRUN = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
COMMON = ["--engine", "torch", "--device", "cpu", "--batch-size", 4, "--log-every", 1, "--eval-every", 1000,
          "--num-samples", 0]


def train(*args, nproc=None, cwd):
    """`train ARGS` in one process, or under torchrun in `nproc`; one thread each, so that ranks do not compete."""
    if nproc:
        return run_python(f"--nproc_per_node={nproc}", "-m", "microgpt", "train", *args, cwd=cwd, python=TORCHRUN,
                          env={"OMP_NUM_THREADS": "1"})
    return microgpt("train", *args, cwd=cwd, env={"OMP_NUM_THREADS": "1"})


def losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r["train_loss"] for r in records if "train_loss" in r]


@pytest.mark.parametrize(("options", "tolerance"), [([], 1e-6), (["--ablate", "position,attention"], 1e-6),
                                                    (["--dropout", "0.2"], 1e-6), (["--dtype", "float32"], 1e-5)],
                         ids=["full", "ablated", "dropout", "float32"])
def test_two_ranks_follow_the_loss_curve_of_one(tmp_path, options, tolerance):
    # (an ablation leaves weights without a gradient, which DistributedDataParallel must be told to expect; dropout's
    # masks follow each document's place in the whole batch, not in a rank's share of it; float32 steps with the
    # fused AdamW kernel, on the gradients DDP averaged, and rounds at 1e-7 of a loss of about 2, where the two
    # curves have come 5e-7 apart)
    one = train(*COMMON, *options, "--steps", 40, "--out", "one", cwd=tmp_path)
    two = train(*COMMON, *options, "--steps", 40, "--out", "two", nproc=2, cwd=tmp_path)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(a) == len(b) == 40 and max(abs(x - y) for x, y in zip(a, b)) <= tolerance


def test_ctrl_c_under_torchrun_saves_and_resume_is_exact(tmp_path):
    whole = train(*COMMON, "--steps", 300, "--out", "whole", nproc=2, cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    process = subprocess.Popen([TORCHRUN, "--nproc_per_node=2", "-m", "microgpt", "train", *map(str, COMMON),
                                "--steps", "300", "--out", "parts"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    line = ""
    for line in process.stdout:
        if line.startswith("step   5/300"):
            break
    os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to torchrun and every rank at once
    out = line + process.communicate(timeout=120)[0]  # (torchrun itself then reports the signal and exits 1)
    assert "resume with: torchrun --nproc_per_node=2 -m microgpt train --resume parts" in out
    resumed = train("--resume", "parts", "--device", "cpu", nproc=2, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a, _ = checkpoint.load(tmp_path / "whole" / "checkpoint.safetensors")
    b, meta = checkpoint.load(tmp_path / "parts" / "checkpoint.safetensors")
    assert meta["step"] == 300 and all(list(a[name][1]) == list(b[name][1]) for name in a)


def test_torchrun_with_another_engine_is_a_clear_error(tmp_path):
    result = train("--engine", "numpy", "--batch-size", 4, nproc=2, cwd=tmp_path)
    assert result.returncode != 0 and "only the torch engine trains on several; add --engine torch" in result.stderr

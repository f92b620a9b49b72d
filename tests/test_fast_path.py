"""The GPU fast path's logic, on the CPU: the graphed step's control flow (warm-up, capture once, replay with fresh
inputs, eager partial batches, fallback), autocast and channels-last plumbing, and flag resolution. The tensor
learning rate that a graph reads is in test_optim.py."""
import argparse
import contextlib
import copy
import json
import os
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import main
from mlpmixer import MLPMixer
from resnet18 import ResNet18
from training import engine
from training.augmentation import AUGMENTATIONS, MIX, MIXES
from training.optim import LRSchedule, build_optimizer
from training.pipelines import TensorBatches
from training.steps import GraphedTrainStep, TrainStep, autocast_context, smoothed_loss

# torch.compile as inductor traces it (Dynamo, AOTAutograd, inductor's decompositions and partitioner), with
# eager kernels instead of the C++ that inductor would build on a CPU (half a minute per model here). Plain
# aot_eager is not used: it fails on dropout behind a transpose (pytorch/pytorch#120035), inductor does not.
TEST_BACKEND = "aot_eager_decomp_partition"


def _pipeline_and_model(model_class=MLPMixer):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (70, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (70,))
    batches = TensorBatches(images, labels, batch_size=16, device="cpu", train=True)  # 4 full + 1 of 6
    model = model_class(10, 32, 8, 16, 1, drop_rate=0.0) if model_class is MLPMixer else model_class()
    return batches, model


def _run_epochs(step_class, epochs=2, compile_with=None, **step_kwargs):
    batches, model = _pipeline_and_model()
    optimizer = build_optimizer("adamw", model.parameters(), 1e-2, 0.9, 5e-4,
                                capturable=step_class is GraphedTrainStep)
    schedule = LRSchedule("cosine", 1e-2, epochs * len(batches))
    if compile_with is not None:
        step_kwargs["compiled_model"] = compile_with(model)
    step = step_class(model, optimizer, "cpu", schedule=schedule, **step_kwargs)
    args = argparse.Namespace(device="cpu", print_every=1, no_progress=True)
    torch.manual_seed(1)
    history = [engine.train(epoch, model, batches, optimizer, args, step)[:2] for epoch in range(epochs)]
    return history, model, step


def test_graphed_step_computes_what_the_eager_step_computes():
    recorded = []

    def capture(run):  # a CPU stand-in for CUDA graph capture: record now, run at each replay
        recorded.append(run)
        return run
    eager_history, eager_model, _ = _run_epochs(TrainStep)
    graph_history, graph_model, step = _run_epochs(GraphedTrainStep, capture=capture,
                                                   eager_context=contextlib.nullcontext, warmup_steps=2)
    assert len(recorded) == 1  # captured once per run
    assert step.eager_full_steps == 2 and step.step_number == 10
    assert graph_history == eager_history
    for a, b in zip(eager_model.state_dict().values(), graph_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class CountingModel:
    """A stand-in for ``torch.compile(model)``: the model itself, noting the batch sizes it is called with."""

    def __init__(self, model):
        self.model, self.sizes = model, []

    def __call__(self, images):
        self.sizes.append(len(images))
        return self.model(images)


def test_compiled_model_runs_every_full_batch_and_the_module_the_partial_ones():
    eager_history, _, _ = _run_epochs(TrainStep)
    history, _, step = _run_epochs(GraphedTrainStep, compile_with=CountingModel, capture=lambda run: run,
                                   eager_context=contextlib.nullcontext, warmup_steps=2)
    assert step.compiled_model.sizes == [16] * 8  # 2 epochs x 4 full batches; the batches of 6 ran the module
    assert history == eager_history


def test_compiled_step_tracks_the_eager_step():
    """torch.compile for real (see ``TEST_BACKEND``), inside the graphed step's capture stand-in: the two
    epochs' losses and accuracies agree. (The weights are not compared: the compiled kernels round
    differently, and AdamW turns the rounding of near-zero gradients into whole learning-rate steps.)"""
    eager_history, _, _ = _run_epochs(TrainStep)
    history, _, _ = _run_epochs(GraphedTrainStep, compile_with=lambda m: torch.compile(m, backend=TEST_BACKEND),
                                capture=lambda run: run, eager_context=contextlib.nullcontext)
    torch.testing.assert_close(torch.tensor(history), torch.tensor(eager_history), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_graphed_step_mixes_batches_as_the_eager_step_does(mix):
    plain_history, _, _ = _run_epochs(TrainStep)
    eager_history, eager_model, _ = _run_epochs(TrainStep, mix=mix)
    graph_history, graph_model, _ = _run_epochs(GraphedTrainStep, capture=lambda run: run,
                                                eager_context=contextlib.nullcontext, mix=mix)
    assert graph_history == eager_history != plain_history
    for a, b in zip(eager_model.state_dict().values(), graph_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_mixed_loss_weighs_both_labels_of_the_blended_images():
    batches, model = _pipeline_and_model()
    reference = copy.deepcopy(model)
    index, noise = batches.plan()[0]
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), "cpu", mix="mixup")
    step(batches, (index, noise))
    images, labels = batches.make_batch(index, noise)
    lam = noise[0, MIX][0]
    logits = reference(lam * images + (1 - lam) * images.flip(0))
    expected = lam * torch.nn.functional.cross_entropy(logits, labels) + (1 - lam) * torch.nn.functional.cross_entropy(
        logits, labels.flip(0))
    torch.testing.assert_close(step.last_loss, expected.detach())
    assert step.correct.item() == (logits.argmax(1) == labels).sum().item()  # accuracy counts each image's own label


def test_compiled_resnet_step_updates_the_modules_batch_norm_statistics():
    """Evaluation runs the module itself, so the compiled training forward must write the running
    statistics of the module's own batch-norm buffers, and its step must update the module's weights."""
    torch.manual_seed(0)
    model = ResNet18()
    reference, initial = copy.deepcopy(model), copy.deepcopy(model.state_dict())
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), "cpu",
              compiled_model=torch.compile(model, backend=TEST_BACKEND))(None, [images, labels])
    TrainStep(reference, torch.optim.SGD(reference.parameters(), lr=0.1), "cpu")(None, [images, labels])
    for (name, value), expected in zip(model.state_dict().items(), reference.state_dict().values()):
        assert not torch.equal(value, initial[name]), name  # every weight and statistic moved
        torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-4, msg=name)


class HostTraffic(TorchDispatchMode):
    """Notes the operations a CUDA graph cannot hold: reading a value back to the host (``.item()``,
    ``bool(tensor)``), making a tensor from host data (``torch.tensor([...])``), and the operations whose
    output size depends on the data (``nonzero``, boolean-mask indexing...), which wait for the GPU."""
    FORBIDDEN = ("aten._local_scalar_dense.default", "aten.lift_fresh.default", "aten.nonzero.default",
                 "aten.masked_select.default", "aten._unique2.default", "aten.unique_dim.default")

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        boolean_index = str(func) == "aten.index.Tensor" and any(
            index is not None and index.dtype == torch.bool for index in args[1])
        if str(func) in self.FORBIDDEN or boolean_index:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def test_host_traffic_catches_what_it_looks_for():
    values = torch.randn(6)
    with HostTraffic() as traffic:
        torch.tensor([3.0, 4.0]).sum().item()
        values[values > 0].nonzero()
        values[torch.arange(3)]  # integer indices: fine
    assert traffic.seen == ["aten.lift_fresh.default", "aten._local_scalar_dense.default", "aten.index.Tensor",
                            "aten.nonzero.default"]


def _host_traffic_of_recorded_step(augment, mix, compile_with=None, precision="fp32"):
    """What ``HostTraffic`` sees while the graphed step's recorded function runs once (the capture stand-in),
    with label smoothing on, as the candidate recipes train."""
    recorded = []

    def capture(run):
        with HostTraffic() as traffic:
            run()
        recorded.append(traffic.seen)
        return run
    torch.manual_seed(0)
    batches = TensorBatches(torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (40,)),
                            batch_size=8, device="cpu", train=True, augment=augment)
    model = MLPMixer(10, 32, 8, 16, 1, drop_rate=0.1)
    optimizer = build_optimizer("adamw", model.parameters(), 1e-3, 0.9, 5e-4, capturable=True)
    step = GraphedTrainStep(model, optimizer, "cpu", schedule=LRSchedule("cosine", 1e-3, 10), mix=mix,
                            label_smoothing=0.1, precision=precision, capture=capture,
                            eager_context=contextlib.nullcontext, warmup_steps=1,
                            compiled_model=compile_with(model) if compile_with else None)
    engine.train(1, model, batches, optimizer, argparse.Namespace(device="cpu", print_every=100, no_progress=True),
                 step)
    assert len(recorded) == 1
    return recorded[0]


@pytest.mark.parametrize("augment", list(AUGMENTATIONS))
@pytest.mark.parametrize("mix", MIXES)
def test_the_recorded_step_never_waits_for_or_copies_from_the_host(augment, mix):
    assert _host_traffic_of_recorded_step(augment, mix) == []


def test_the_recorded_compiled_step_never_waits_for_or_copies_from_the_host():
    compile_with = lambda model: torch.compile(model, backend=TEST_BACKEND)  # noqa: E731
    assert _host_traffic_of_recorded_step("padcrop_cutout", "cutmix", compile_with) == []


def test_the_recorded_fp16_step_scales_its_loss_without_host_traffic():
    """fp16's loss scaler with a fused optimizer: the overflow check and the skipped step stay on the device."""
    assert _host_traffic_of_recorded_step("template", "none", precision="fp16") == []


def test_graphed_fp16_step_computes_what_the_eager_fp16_step_computes():
    eager_history, eager_model, eager_step = _run_epochs(TrainStep, precision="fp16")
    graph_history, graph_model, graph_step = _run_epochs(GraphedTrainStep, capture=lambda run: run,
                                                         eager_context=contextlib.nullcontext, precision="fp16")
    assert graph_history == eager_history
    for a, b in zip(eager_model.state_dict().values(), graph_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert eager_step.scaler.state_dict() == graph_step.scaler.state_dict()


def test_fp16_step_is_a_loss_scaled_autocast_step():
    batches, model = _pipeline_and_model()
    reference = copy.deepcopy(model)
    optimizer = build_optimizer("adamw", model.parameters(), 1e-2, 0.9, 5e-4)
    reference_optimizer = build_optimizer("adamw", reference.parameters(), 1e-2, 0.9, 5e-4)
    scaler = torch.amp.GradScaler("cpu")
    step = TrainStep(model, optimizer, "cpu", precision="fp16")
    for index, noise in batches.plan()[:3]:
        images, labels = batches.make_batch(index, noise)
        step(batches, (index, noise))
        reference_optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            logits = reference(images)
        assert logits.dtype == torch.float16
        scaler.scale(torch.nn.functional.cross_entropy(logits.float(), labels)).backward()
        scaler.step(reference_optimizer)
        scaler.update()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b)
    assert step.scaler.state_dict() == scaler.state_dict()


def test_fp16_step_skips_an_overflowing_step_and_halves_its_scale():
    batches, model = _pipeline_and_model()
    before = copy.deepcopy(model.state_dict())
    step = TrainStep(model, build_optimizer("adamw", model.parameters(), 1e-2, 0.9, 5e-4), "cpu", precision="fp16")
    images, labels = batches.make_batch(*batches.plan()[0])
    step(None, [images * 1e6, labels])  # beyond fp16's range: the gradients are not finite
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert step.scaler.get_scale() == 65536.0 / 2
    step(None, [images, labels])
    assert not torch.equal(model.state_dict()["head.weight"], before["head.weight"])


def test_failed_capture_warns_and_continues_eager():
    def broken(run):
        raise RuntimeError("operation not permitted when stream is capturing")
    eager_history, _, _ = _run_epochs(TrainStep)
    with pytest.warns(UserWarning, match="CUDA graph capture failed.*continuing with eager steps"):
        history, _, step = _run_epochs(GraphedTrainStep, capture=broken, eager_context=contextlib.nullcontext)
    assert step.capture_failed and step.replay is None and history == eager_history


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.5])
def test_smoothed_loss_matches_the_builtin_values_and_gradients(label_smoothing):
    torch.manual_seed(0)
    logits = torch.randn(16, 10, dtype=torch.float64, requires_grad=True) * 5
    labels = torch.randint(0, 10, (16,))
    ours = smoothed_loss(logits, labels, label_smoothing)
    reference = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    torch.testing.assert_close(ours.double(), reference)
    torch.testing.assert_close(torch.autograd.grad(ours, logits)[0], torch.autograd.grad(reference, logits)[0])


def test_smoothed_loss_of_half_precision_logits_is_computed_in_float32():
    logits = (torch.randn(8, 10) * 30).bfloat16()
    labels = torch.randint(0, 10, (8,))
    loss = smoothed_loss(logits, labels, 0.1)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits.float(), labels, label_smoothing=0.1))


def test_train_step_matches_a_hand_written_step():
    batches, model = _pipeline_and_model()
    reference = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    images = torch.randn(8, 3, 32, 32)
    labels = torch.randint(0, 10, (8,))
    step = TrainStep(model, optimizer, "cpu", label_smoothing=0.1)
    step(None, [images, labels])
    loss = torch.nn.functional.cross_entropy(reference(images), labels, label_smoothing=0.1)
    reference_optimizer.zero_grad()
    loss.backward()
    reference_optimizer.step()
    torch.testing.assert_close(step.last_loss, loss.detach())
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b)


def test_bf16_autocast_and_channels_last_on_cpu():
    model = ResNet18().eval().to(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), autocast_context("cpu", "bf16"):
        assert model(images).dtype == torch.bfloat16
    with autocast_context("cpu", "fp32"):
        assert model.linear(torch.randn(2, 512)).dtype == torch.float32


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_keeps_no_weight_cache_whose_copies_a_captured_graph_would_read_after_they_are_freed(precision):
    with autocast_context("cpu", precision):
        assert torch.is_autocast_cache_enabled() is False


def _args(**overrides):
    base = dict(precision="auto", channels_last="auto", cuda_graph="auto", pipeline="tensor", model="resnet18")
    base.update(overrides)
    return argparse.Namespace(**base)


def test_fast_path_flags_resolve_per_device():
    cpu = _args()
    engine.resolve_fast_path(cpu, torch.device("cpu"))
    assert (cpu.precision, cpu.channels_last, cpu.cuda_graph) == ("fp32", True, False)  # oneDNN's faster layout
    for model in ("mlp", "mlpmixer"):
        other = _args(model=model)
        engine.resolve_fast_path(other, torch.device("cpu"))
        assert (other.precision, other.channels_last, other.cuda_graph) == ("fp32", False, False)
    plain = _args(channels_last="off")
    engine.resolve_fast_path(plain, torch.device("cpu"))
    assert plain.channels_last is False
    forced = _args(precision="bf16", channels_last="on", model="mlp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a CPU that emulates bf16 says so (below)
        engine.resolve_fast_path(forced, torch.device("cpu"))
    assert (forced.precision, forced.channels_last, forced.cuda_graph) == ("bf16", True, False)
    with pytest.warns(UserWarning, match="--cuda_graph on needs CUDA"):
        engine.resolve_fast_path(_args(cuda_graph="on"), torch.device("cpu"))
    with pytest.warns(UserWarning, match="--precision fp16 is for CUDA GPUs"):
        engine.resolve_fast_path(_args(precision="fp16"), torch.device("cpu"))


@pytest.mark.parametrize("machine, avx512_bf16, amx, warned", [
    ("x86_64", False, False, True),  # this project's CPU: an MLP epoch took 9.7x as long in bf16
    ("x86_64", True, False, False),
    ("AMD64", False, True, False),  # Windows' name
    ("AMD64", False, False, True),
    ("aarch64", False, False, False),  # torch's checks are for x86: no claim elsewhere
    ("x86_64", None, None, False),  # a torch without the checks
])
def test_bf16_on_a_cpu_that_emulates_it_is_warned_of(monkeypatch, machine, avx512_bf16, amx, warned):
    monkeypatch.setattr(engine.platform, "machine", lambda: machine)
    for name, answer in (("_is_avx512_bf16_supported", avx512_bf16), ("_is_amx_tile_supported", amx)):
        if answer is None:
            monkeypatch.delattr(torch.cpu, name, raising=False)
        else:
            monkeypatch.setattr(torch.cpu, name, lambda answer=answer: answer, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine.resolve_fast_path(_args(precision="bf16"), torch.device("cpu"))
    assert [str(w.message) for w in caught] == (["--precision bf16: this CPU has no AVX512-BF16 or AMX, so bf16 is "
                                                 "emulated there, much slower than fp32; use --precision auto or fp32"]
                                                if warned else [])


def _pretend_cuda_gpu(monkeypatch, capability, name):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # resolve_fast_path turns it on for CUDA


@pytest.mark.parametrize("capability, name, precision, channels_last", [
    ((9, 0), "NVIDIA H100", "bf16", True),
    ((8, 9), "NVIDIA L4", "bf16", True),
    ((7, 5), "Tesla T4", "fp32", False),  # Colab's free GPU: bf16 only emulated there
    ((7, 0), "Tesla V100", "fp32", False),
])
def test_auto_precision_is_bf16_only_on_gpus_with_native_bf16(monkeypatch, capability, name, precision,
                                                               channels_last):
    _pretend_cuda_gpu(monkeypatch, capability, name)
    args = _args()
    engine.resolve_fast_path(args, torch.device("cuda"))
    assert (args.precision, args.channels_last, args.cuda_graph) == (precision, channels_last, True)
    forced = _args(precision="bf16")
    if precision == "bf16":
        engine.resolve_fast_path(forced, torch.device("cuda"))
    else:
        with pytest.warns(UserWarning, match=rf"^{name} has no native bf16 \(compute capability "
                                             rf"{capability[0]}\.{capability[1]}\): .*use --precision auto or fp32"):
            engine.resolve_fast_path(forced, torch.device("cuda"))
    assert forced.precision == "bf16"  # asked for explicitly: kept, with the warning
    half = _args(precision="fp16")
    engine.resolve_fast_path(half, torch.device("cuda"))
    assert (half.precision, half.channels_last) == ("fp16", True)  # tensor-core convolutions on every such GPU


@pytest.mark.filterwarnings("ignore:--precision bf16")  # this CPU may emulate bf16: the flags run all the same
def test_cli_runs_the_fast_path_flags_on_cpu(run_args, tmp_path):
    logdir = str(tmp_path / "run")
    assert main.main(run_args("mlpmixer", "--logdir", logdir, "--precision", "bf16", "--channels_last", "on",
                              "--lr_schedule", "onecycle", "--label_smoothing", "0.1", epochs=2)) == 0
    with open(os.path.join(logdir, "results.json")) as f:
        results = json.load(f)
    assert results["args"]["precision"] == "bf16" and results["args"]["channels_last"] is True
    assert results["args"]["cuda_graph"] is False and results["status"] == "completed"


def test_cli_compile_flag_compiles_the_model_once(run_args, tmp_path, monkeypatch):
    real_compile, compiled = torch.compile, []

    def compile_without_cpp_build(model, **options):
        compiled.append(type(model).__name__)
        return real_compile(model, backend=TEST_BACKEND, **options)
    monkeypatch.setattr(torch, "compile", compile_without_cpp_build)
    logdir = str(tmp_path / "run")
    assert main.main(run_args("mlp", "--logdir", logdir, "--compile", epochs=2)) == 0
    with open(os.path.join(logdir, "results.json")) as f:
        results = json.load(f)
    assert compiled == ["MLP"] and results["args"]["compile"] is True and results["status"] == "completed"

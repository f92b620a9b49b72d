"""The GPU fast path's logic, on the CPU: the graphed step's control flow (warm-up, capture once, replay with fresh
inputs, eager partial batches, fallback), and autocast and channels-last plumbing. How its flags resolve is in
test_fast_path_flags.py, the tensor learning rate that a graph reads in test_optim.py."""
import argparse
import contextlib
import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import TEST_BACKEND
from mlpmixer import MLPMixer
from resnet18 import ResNet18
from training import engine
from training.augmentation import AUGMENTATIONS, MIX, MIXES
from training.optim import LRSchedule, build_optimizer
from training.pipelines import TensorBatches
from training.steps import GraphedTrainStep, TrainStep, autocast_context, smoothed_loss


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
    eager_steps = []

    @contextlib.contextmanager
    def eager_context():
        eager_steps.append(len(recorded))
        yield
    eager_history, eager_model, _ = _run_epochs(TrainStep)
    graph_history, graph_model, step = _run_epochs(GraphedTrainStep, capture=capture, eager_context=eager_context,
                                                   warmup_steps=2)
    assert len(recorded) == 1  # captured once per run
    assert eager_steps == [0, 0, 1, 1]  # two full batches warm up, then only each epoch's partial one is eager
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


def test_an_epochs_loss_and_accuracy_are_the_means_over_its_images_not_its_batches():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the model stays as it is, so its means are known
    batches = [[torch.randn(size, 3, 32, 32), torch.randint(0, 10, (size,))] for size in (8, 8, 3)]
    images, labels = (torch.cat([batch[part] for batch in batches]) for part in (0, 1))
    with torch.no_grad():
        logits = model(images)
    args = argparse.Namespace(device="cpu", print_every=1, no_progress=True)
    step = TrainStep(model, optimizer, "cpu")
    for epoch in (1, 2):  # the second epoch's sums start from zero again
        loss, accuracy, _ = engine.train(epoch, model, batches, optimizer, args, step)
        assert loss == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)
        assert accuracy == pytest.approx((logits.argmax(1) == labels).float().mean().item())


class _LayoutRecorder(torch.nn.Module):
    """A linear classifier that records whether each batch it gets is in channels-last layout."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3 * 32 * 32, 10)
        self.channels_last = []

    def forward(self, images):
        self.channels_last.append(images.is_contiguous(memory_format=torch.channels_last))
        return self.linear(images.flatten(1))


@pytest.mark.parametrize("mix", ["none", "cutmix"])
@pytest.mark.parametrize("channels_last", [True, False])
def test_a_step_feeds_the_model_the_layout_it_was_asked_for_from_either_pipeline(channels_last, mix):
    batches, _ = _pipeline_and_model()
    model = _LayoutRecorder()
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), "cpu", channels_last=channels_last, mix=mix)
    step(batches, next(iter(batches.plan())))  # the tensor pipeline's batch
    step(None, [torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))])  # a DataLoader's
    graphed = GraphedTrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), "cpu", channels_last=channels_last,
                               mix=mix, warmup_steps=0, capture=lambda run: run, eager_context=contextlib.nullcontext)
    graphed(batches, next(iter(batches.plan())))  # recorded at once, then replayed
    assert model.channels_last == [channels_last] * 3


@pytest.mark.parametrize("mix", MIXES)
def test_a_step_keeps_its_sums_and_its_mixing_noise_on_its_device(mix):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).to("meta")
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), "meta", mix=mix)  # meta: a GPU's stand-in
    batch = [torch.randn(4, 3, 32, 32, device="meta"), torch.randint(0, 10, (4,), device="meta")]
    step(None, batch)  # a DataLoader's batch, already on the device (the tensor pipeline's noise is its own)
    assert {tensor.device.type for tensor in (step.loss_sum, step.correct, step.last_loss)} == {"meta"}
    if mix != "none":  # drawn on the host, each eager step would copy it over (a CPU scalar mixes into a GPU batch)
        assert step._mix_noise(None, batch).device.type == "meta"


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

"""The training step: forward under autocast, ``utils.cross_entropy_loss``, backward, optimizer step.

``TrainStep`` runs it eagerly (the plain path, and the only one on a CPU). ``GraphedTrainStep`` runs
the same step, with the batch's gather, augmentation and normalisation in front of it, for a few
eager warm-up steps, then records it once in a CUDA graph and replays that graph for every later
full batch: one launch per step instead of hundreds, with the same arithmetic. Either may run a
``torch.compile``d model; its compilation then happens during the warm-up, before the capture.
"""
import contextlib
import warnings

import torch

from utils import compute_accuracy, cross_entropy_loss, to_device

from .augmentation import MIX, mix_batch
from .devices import out_of_memory
from .errors import UserError
from .optim import set_learning_rate


HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def smoothed_loss(logits, labels, label_smoothing):
    """``utils.cross_entropy_loss`` against labels that keep ``1 - label_smoothing`` of their mass and
    spread the rest uniformly over the classes.

    The uniform part is the mean over classes of ``-log p_c``, which is ``logsumexp(z) - mean(z)``. It
    lives here, not in the graded loss, whose signature is the template's ``(logits, labels)``.
    """
    loss = cross_entropy_loss(logits, labels)
    if not label_smoothing:
        return loss
    if logits.dtype in HALF_DTYPES.values():
        logits = logits.float()  # as the graded loss does: half-precision log-sum-exp loses digits
    uniform = (torch.logsumexp(logits, dim=1) - logits.mean(dim=1)).mean()
    return (1.0 - label_smoothing) * loss + label_smoothing * uniform


def autocast_context(device, precision):
    """bf16 or fp16 autocast, or nothing for fp32.

    The autocast weight cache is off: a graph captured inside a caching autocast region would keep
    reading half-precision weight copies that the region frees when it exits (garbage or NaN on replay).
    """
    if precision in HALF_DTYPES:
        return torch.autocast(device_type=torch.device(device).type, dtype=HALF_DTYPES[precision],
                              cache_enabled=False)
    return contextlib.nullcontext()


def make_grad_scaler(device, precision):
    """fp16's dynamic loss scaling (small fp16 gradients round to zero without it); ``None`` otherwise.

    With a fused optimizer the scaler's overflow check and skipped step stay on the device, so the
    step can still be recorded in a CUDA graph."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type)


def correct_count(logits, labels):
    """How many of the batch's images ``utils.compute_accuracy`` counts as right, as a whole number: its float32
    mean times the batch size is not always one (30 of 50 gave 30.0000019), and an epoch's accuracy summed
    from such counts would rank two runs with equal accuracies apart by rounding noise."""
    return torch.round(compute_accuracy(logits, labels) * labels.shape[0])


def memory_format_for(channels_last):
    return torch.channels_last if channels_last else torch.contiguous_format


def epoch_items(dataloader):
    """What one epoch iterates over: a ``TensorBatches`` plan of ``(index, noise)``, or any loader's
    ``[images, labels]`` batches."""
    return dataloader.plan() if hasattr(dataloader, "plan") else dataloader


def prepare_batch(dataloader, item, device, memory_format=torch.contiguous_format):
    """Turn one item of ``epoch_items`` into ``(images, labels)`` on ``device``."""
    images, labels = dataloader.make_batch(*item) if hasattr(dataloader, "plan") else to_device(item, device)
    return images.contiguous(memory_format=memory_format), labels


def first_compiled_call(compiled_model, images):
    """``compiled_model(images)`` the first time, which compiles the model. Where torch.compile cannot build its
    kernels (no C++ compiler for a CPU's, no Triton for a GPU's: a laptop, a minimal container), the run stops with
    one line, not torch's traceback of a hundred; it does not go on uncompiled, which would pass eager times off
    as compiled ones in the benchmarks."""
    try:
        return compiled_model(images)
    except Exception as exc:
        if out_of_memory(exc) is not None:  # the batch, not the compiler: said as in an uncompiled run
            raise
        cause = getattr(exc, "inner_exception", None) or exc  # what the compiler raised, under dynamo's wrapper
        reason = (str(cause).strip().splitlines() or [""])[0]
        raise UserError(f"--compile: torch.compile failed on this machine ({type(cause).__name__}: {reason}); it needs "
                        "a C++ compiler to compile for a CPU, Triton for a GPU: install it, or run without --compile"
                        ) from None


class TrainStep:
    """One eager optimisation step per call, keeping the epoch's loss and accuracy sums on the device."""

    def __init__(self, model, optimizer, device, precision="fp32", channels_last=False, label_smoothing=0.0,
                 schedule=None, first_step=0, compiled_model=None, mix="none"):
        """
        Args:
            model: the network, already on ``device``.
            optimizer: its optimizer.
            device: where the batches are computed.
            precision: ``"bf16"`` or ``"fp16"`` (autocast; fp16 with loss scaling) or ``"fp32"``.
            channels_last: feed images in channels-last memory layout (faster convolutions on GPUs and CPUs).
            label_smoothing: the share of each label's mass spread over all classes (``smoothed_loss``).
            schedule: maps a global step number to a learning rate; ``None`` keeps the optimizer's.
            first_step: global number of the next step (non-zero when a run resumes).
            compiled_model: ``torch.compile(model)``, run on batches of the shape of the first batch
                (every full batch); other batches run ``model`` itself rather than compile a second shape.
            mix: ``none``, ``mixup`` or ``cutmix`` (``augmentation.mix_batch``); the loss then weighs each
                image's label and its partner's, while the training accuracy counts the image's own label.
        """
        self.model, self.optimizer, self.device = model, optimizer, torch.device(device)
        self.compiled_model, self.compiled_shape = compiled_model, None
        self.mix = mix
        self.precision, self.label_smoothing, self.schedule = precision, label_smoothing, schedule
        self.scaler = make_grad_scaler(self.device, precision)
        self.memory_format = memory_format_for(channels_last)
        self.step_number = first_step
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct = torch.zeros((), device=self.device)
        self.last_loss = torch.zeros((), device=self.device)
        self.seen = 0

    def reset(self):
        """Zero the running sums in place (a captured graph keeps adding into the same tensors)."""
        self.loss_sum.zero_()
        self.correct.zero_()
        self.seen = 0

    def means(self):
        """Mean loss and accuracy since ``reset`` (waits for the device)."""
        seen = max(self.seen, 1)
        return self.loss_sum.item() / seen, self.correct.item() / seen

    def _update_learning_rate(self):
        if self.schedule is not None:
            set_learning_rate(self.optimizer, self.schedule(self.step_number))

    def _forward(self, images):
        if self.compiled_model is None:
            return self.model(images)
        if self.compiled_shape is None:
            self.compiled_shape = images.shape
            return first_compiled_call(self.compiled_model, images)
        return (self.compiled_model if images.shape == self.compiled_shape else self.model)(images)

    def _mix_noise(self, dataloader, item):
        """The batch's three mixing uniforms: its noise table's first row on the tensor pipeline (which a
        graph reads from its input buffer), drawn here for any other loader; ``None`` without mixing."""
        if self.mix == "none":
            return None
        if hasattr(dataloader, "plan"):
            return item[1][0, MIX]
        return torch.rand(3, device=self.device)

    def compute(self, images, labels, mix_noise=None):
        """The step itself: everything here may be recorded into a CUDA graph (no host synchronisation)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.mix != "none":
            images, lam = mix_batch(images, mix_noise, self.mix)
            images = images.contiguous(memory_format=self.memory_format)  # the box's torch.where may change it
        with autocast_context(self.device, self.precision):
            logits = self._forward(images)
        loss = smoothed_loss(logits, labels, self.label_smoothing)
        if self.mix != "none":
            loss = lam * loss + (1 - lam) * smoothed_loss(logits, labels.flip(0), self.label_smoothing)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:  # a step whose scaled gradients overflowed is skipped, and the scale halves
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        batch = labels.shape[0]
        self.loss_sum += loss.detach() * batch
        self.correct += correct_count(logits.detach(), labels)
        self.last_loss.copy_(loss.detach())

    def __call__(self, dataloader, item):
        """One step on ``item``, an element of ``epoch_items(dataloader)``."""
        images, labels = prepare_batch(dataloader, item, self.device, self.memory_format)
        self._update_learning_rate()
        self.compute(images, labels, self._mix_noise(dataloader, item))
        self.step_number += 1
        self.seen += labels.shape[0]


def capture_cuda_graph(run):
    """Record ``run()`` into a CUDA graph without executing it; return the function that replays it."""
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return graph.replay


@contextlib.contextmanager
def side_stream():
    """Run eager warm-up work on a side stream, as CUDA graph capture requires, then rejoin."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        yield
    torch.cuda.current_stream().wait_stream(stream)


class GraphedTrainStep(TrainStep):
    """``TrainStep`` recorded once in a CUDA graph, batch preparation included, then replayed.

    Needs a ``TensorBatches`` pipeline (the data already on the GPU). The first ``warmup_steps`` full
    batches run eagerly on a side stream (cuDNN autotuning, optimizer state, lazy allocations); the next
    one is captured and replayed, and so is every later full batch, after its indices and augmentation
    noise are copied into the graph's input buffers. A batch of another size (an epoch's last, partial
    batch) runs eagerly. If capture fails the run warns and stays eager.
    """

    def __init__(self, *args, warmup_steps=3, capture=capture_cuda_graph, eager_context=side_stream, **kwargs):
        """
        Args:
            *args, **kwargs: as ``TrainStep``.
            warmup_steps: eager full-batch steps before the capture.
            capture: records a function and returns its replay (``capture_cuda_graph``; tests pass a stand-in).
            eager_context: context of the eager steps (``side_stream``).
        """
        super().__init__(*args, **kwargs)
        self.warmup_steps, self.capture, self.eager_context = warmup_steps, capture, eager_context
        self.eager_full_steps = 0
        self.replay = None
        self.capture_failed = False
        self.static_index = self.static_noise = None

    def _record(self, dataloader, index, noise):
        self.static_index, self.static_noise = index.clone(), noise.clone()

        def whole_step():
            images, labels = dataloader.make_batch(self.static_index, self.static_noise)
            self.compute(images.contiguous(memory_format=self.memory_format), labels,
                         self._mix_noise(dataloader, (self.static_index, self.static_noise)))
        try:
            self.replay = self.capture(whole_step)
        except Exception as exc:  # capture can fail for reasons this code cannot foresee: stay correct, go eager
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            warnings.warn(f"CUDA graph capture failed ({type(exc).__name__}: {exc}); continuing with eager steps")
            self.capture_failed = True

    def __call__(self, dataloader, item):
        index, noise = item
        full = len(index) == dataloader.batch_size
        if full and self.replay is None and not self.capture_failed and self.eager_full_steps >= self.warmup_steps:
            self._record(dataloader, index, noise)
        if full and self.replay is not None:
            self.static_index.copy_(index)
            self.static_noise.copy_(noise)
            self._update_learning_rate()
            self.replay()
            self.step_number += 1
            self.seen += len(index)
            return
        with self.eager_context():
            super().__call__(dataloader, item)
        self.eager_full_steps += int(full)

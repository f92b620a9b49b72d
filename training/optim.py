"""The template's optimizers, and learning-rate schedules that also work inside a CUDA graph."""
import math

import torch

from .errors import UserError

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "onecycle")
IMPLEMENTATION_FLAGS = ("capturable", "fused", "foreach")  # how an optimizer computes, not what


def unread_flags(settings):
    """The flags that a run with these ``settings`` (its flags by name) trains without, each with the flag that
    decides it and why: ``momentum`` but with SGD's momentum, ``weight_decay`` with adam (as in the template),
    ``warmup_fraction`` with a constant learning rate."""
    unread = {}
    if settings.get("optimizer") != "momentum":
        unread["momentum"] = ("optimizer", "only --optimizer momentum has momentum")
    if settings.get("optimizer") == "adam":
        unread["weight_decay"] = ("optimizer", "the template's adam has no weight decay (adamw decays the weights)")
    if settings.get("lr_schedule") == "constant":
        unread["warmup_fraction"] = ("lr_schedule", "only cosine and onecycle warm up")
    return unread


def build_optimizer(name, parameters, lr, momentum, weight_decay, capturable=False):
    """The template's four optimizers; ``adam`` takes no weight decay, as in the template.

    The fused implementation (one kernel for all parameters, the same update) is used where this
    torch build has it for the parameters' device. With ``capturable``, the optimizer can be recorded
    in a CUDA graph: its step counter stays on the GPU and its learning rate is a one-element GPU tensor
    that a schedule updates in place.
    """
    settings = {
        "adamw": (torch.optim.AdamW, dict(weight_decay=weight_decay)),
        "adam": (torch.optim.Adam, dict()),
        "sgd": (torch.optim.SGD, dict(weight_decay=weight_decay)),
        "momentum": (torch.optim.SGD, dict(momentum=momentum, weight_decay=weight_decay)),
    }
    if name not in settings:
        raise UserError(f"unknown optimizer {name!r}; valid choices: {', '.join(OPTIMIZERS)}")
    optimizer_class, options = settings[name]
    parameters = list(parameters)
    if capturable:
        device = parameters[0].device
        options["lr"] = torch.tensor(float(lr), device=device)
        if optimizer_class is not torch.optim.SGD:  # SGD keeps no step counter: nothing to capture
            options["capturable"] = True
    else:
        options["lr"] = lr
    try:
        return optimizer_class(parameters, fused=True, **options)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device or torch version
        return optimizer_class(parameters, **options)


def load_optimizer_state(optimizer, saved):
    """Load a checkpoint's optimizer state into ``optimizer`` as this run built it.

    A state dict carries each group's implementation flags (``capturable``, ``fused``, ``foreach``) and its
    learning rate as the saving run had them (a float, or a tensor on that machine's device). Loaded as saved,
    a checkpoint made without a CUDA graph (on a CPU, or with ``--cuda_graph off``) would leave the optimizer
    uncapturable, and the resumed run's capture would fail. So the saved groups take this optimizer's flags
    and its learning rate's type and device first; loading then also puts each step counter where these
    flags want it (on the GPU for a capturable optimizer).
    """
    groups = []
    for saved_group, group in zip(saved["param_groups"], optimizer.param_groups):
        lr = float(saved_group["lr"])
        if isinstance(group["lr"], torch.Tensor):
            lr = torch.tensor(lr, device=group["lr"].device)
        flags = {key: group[key] for key in IMPLEMENTATION_FLAGS if key in group}
        groups.append({**saved_group, **flags, "lr": lr})
    optimizer.load_state_dict({**saved, "param_groups": groups})


def set_learning_rate(optimizer, value):
    """Set every group's learning rate: in place for a tensor (a captured graph reads it), else assign."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)
        else:
            group["lr"] = value


class LRSchedule:
    """Learning rate per optimisation step.

    ``constant``: the template's fixed rate. ``cosine``: a linear warm-up over ``warmup_fraction`` of the
    steps, then a cosine decay to zero. ``onecycle``: the same warm-up, then a linear decay to zero.
    """

    def __init__(self, kind, peak_lr, total_steps, warmup_fraction=0.2):
        """
        Args:
            kind: one of ``SCHEDULES``.
            peak_lr: the rate at the end of warm-up (the whole run's rate for ``constant``).
            total_steps: optimisation steps in the whole run.
            warmup_fraction: share of the steps spent warming up (``cosine`` and ``onecycle``).
        """
        if kind not in SCHEDULES:
            raise UserError(f"unknown --lr_schedule {kind!r}; valid choices: {', '.join(SCHEDULES)}")
        self.kind, self.peak_lr, self.total_steps = kind, peak_lr, max(total_steps, 1)
        self.warmup_steps = int(round(warmup_fraction * self.total_steps)) if kind != "constant" else 0

    def __call__(self, step):
        if self.kind == "constant":
            return self.peak_lr
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)
        progress = min(max(progress, 0.0), 1.0)
        if self.kind == "cosine":
            return self.peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.peak_lr * (1.0 - progress)

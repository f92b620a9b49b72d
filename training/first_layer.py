"""How far training took the first layer that Problem 4 asks to picture from its random initialisation, and what
it learned there: the numbers behind the comparison of the ResNet18's kernels with the MLP-Mixer's token-mixing
weights.

A picture of these weights after a short training run is mostly the initialisation's noise; ``moved`` says how
much (the norm of the change over the norm of the initial weights). One measure per model then tells the two
pictures apart, for the initial weights, the trained ones and the change between them:

- ResNet18 ``conv1``, sixty-four 3x3 RGB kernels: ``colour_share``, the share of a kernel's squared weight off its
  channel average (0 for a kernel that sees only brightness, about 2/3 for random weights).
- MLP-Mixer, the first block's token-mixing units, each a picture over the grid of patches: ``local_share``, the
  share of a unit's squared weight within the 3x3 patches centred on its largest weight (1 for a unit as local as
  a 3x3 convolution; near 9 over the number of patches for random weights). A grid of 3x3 patches or fewer is all
  within that window, and has no ``local_share``.
"""
import functools

import torch

from .persistence import finite_or_none

LOCAL_WINDOW = 3  # patches on a side: the span of a 3x3 convolution, counted in patches
MEASURES = {  # each measure's name in words, what it is the share of, values to read it against, and when it has none
    "colour_share": ("colour share", "the share of each kernel's squared weight off its channel average",
                     "0 for a kernel that sees brightness only, about 2/3 for random weights",
                     "a weight that was not finite"),
    "local_share": ("local share",
                    f"the share of each unit's squared weight within the {LOCAL_WINDOW}x{LOCAL_WINDOW} patches centred "
                    "on its largest weight", f"1 for a unit as local as a {LOCAL_WINDOW}x{LOCAL_WINDOW} convolution",
                    f"a grid of {LOCAL_WINDOW}x{LOCAL_WINDOW} patches or fewer, all within that window"),
}


def pictured_layer(model):
    """``(name, weight, measure, measured)`` of ``model``'s pictured first layer: the parameter's name, its weight (one
    row per unit), the name of the model's measure (None where it does not apply) and the function that computes it
    from such a weight; None for a model without one (the MLP)."""
    if hasattr(model, "conv1"):  # ResNet18: [64, 3, 3, 3]
        return "conv1.weight", model.conv1.weight, "colour_share", colour_share
    if hasattr(model, "blocks"):  # MLP-Mixer: [tokens_dim, num_patches]
        grid_size = model.patchemb.grid_size
        measure = "local_share" if grid_size > LOCAL_WINDOW else None
        return ("blocks.0.mlp_tokens.fc1.weight", model.blocks[0].mlp_tokens.fc1.weight, measure,
                functools.partial(local_share, grid_size=grid_size))
    return None


def colour_share(kernels):
    """Each kernel's squared weight off its channel average, as a share of its squared weight, averaged over the
    kernels (``kernels``: ``[units, channels, height, width]``)."""
    off_gray = kernels - kernels.mean(1, keepdim=True)
    return _mean_share(off_gray.pow(2).flatten(1).sum(1), kernels.pow(2).flatten(1).sum(1))


def local_share(units, grid_size):
    """Each unit's squared weight within the ``LOCAL_WINDOW`` x ``LOCAL_WINDOW`` patches centred on its largest weight
    (cut at the grid's edge), as a share of its squared weight, averaged over the units (``units``:
    ``[units, grid_size ** 2]``, patches in row-major order as ``PatchEmbed`` flattens them)."""
    squares = units.pow(2).reshape(len(units), grid_size, grid_size)
    peak = units.abs().argmax(1)
    rows, cols = torch.arange(grid_size, device=units.device), torch.arange(grid_size, device=units.device)
    near_row = (rows[None, :] - (peak // grid_size)[:, None]).abs() <= LOCAL_WINDOW // 2  # [units, grid_size]
    near_col = (cols[None, :] - (peak % grid_size)[:, None]).abs() <= LOCAL_WINDOW // 2
    window = near_row[:, :, None] & near_col[:, None, :]  # [units, grid_size, grid_size]
    return _mean_share((squares * window).flatten(1).sum(1), squares.flatten(1).sum(1))


def _mean_share(part, whole):
    """The mean of ``part / whole`` over the units whose ``whole`` is not zero; None where there is none, or where
    some weight was not finite (JSON has no NaN)."""
    kept = whole != 0  # a NaN sum is kept, so that it shows
    return finite_or_none((part[kept] / whole[kept]).mean().item()) if kept.any() else None


@torch.no_grad()
def first_layer_statistics(model, initial):
    """``model``'s pictured first layer against ``initial``, a copy of its weight when the model was built.

    Args:
        model: a ``ResNet18`` or an ``MLPMixer`` as the graded files build them.
        initial: the weight of ``pictured_layer(model)`` cloned before the first training step.

    Returns:
        ``{"weight", "units", "moved", "measure", "initial", "trained", "change"}``: the parameter's name, its number
        of units, the norm of the change over the initial norm, the name of the model's measure (None where it does
        not apply) and that measure of the initial weights, of the trained weights and of the change.
    """
    weight, parameter, measure, measured = pictured_layer(model)
    trained = parameter.detach().float()
    initial = initial.to(trained)
    values = {name: measured(units) if measure else None
              for name, units in (("initial", initial), ("trained", trained), ("change", trained - initial))}
    initial_norm = initial.norm().item()
    return {"weight": weight, "units": len(trained), "measure": measure,
            "moved": finite_or_none((trained - initial).norm().item() / initial_norm) if initial_norm else None,
            **values}


def summary_line(stats):
    """``first_layer_statistics``' result in one line for the console."""
    line = (f"first layer ({stats['weight']}, {stats['units']} units): moved {_shown(stats['moved'])} of its "
            "initial norm")
    if stats["measure"]:
        line += (f"; {MEASURES[stats['measure']][1]}: {_shown(stats['trained'])} (initially "
                 f"{_shown(stats['initial'])}, of the change {_shown(stats['change'])})")
    return line


def _shown(value):
    return "-" if value is None else f"{value:.2f}"

"""How much gradient each hidden layer of a trained MLP lets through its activation, measured on images: the
logs' evidence for Problem 4's question of which activation trains the MLP best, and why.

A unit's activation passes the gradient on multiplied by its derivative at the unit's input. Where that derivative
is near zero (a relu's negative inputs, a tanh's or sigmoid's saturated tails) the unit is *flat*: the layers below
it learn little through it. A unit flat on every image is dead for that data.
"""
import torch

from .persistence import finite_or_none
from .steps import epoch_items, prepare_batch

# each activation's derivative as a function of its input, and the derivative's peak (at input 0, or above it)
DERIVATIVES = {
    "relu": (lambda z: (z > 0).float(), 1.0),
    "tanh": (lambda z: 1 - torch.tanh(z) ** 2, 1.0),
    "sigmoid": (lambda z: torch.sigmoid(z) * (1 - torch.sigmoid(z)), 0.25),
}
FLAT_BELOW = 0.1  # a derivative under this share of its peak passes almost none of the gradient on


@torch.no_grad()
def hidden_unit_statistics(model, loader, device):
    """Each hidden layer's units over the images of ``loader``, in evaluation mode and without autocast.

    Args:
        model: an ``MLP`` (``hidden_layers`` and ``activation`` as the graded file has them).
        loader: a ``TensorBatches`` pipeline or any iterable of ``[images, labels]`` batches.
        device: where ``model`` is.

    Returns:
        ``{"activation", "derivative_peak", "flat_below", "images", "layers"}``, where ``layers`` holds, for each
        hidden layer in order, ``units``, ``mean_derivative`` (over every unit and image), ``flat_share`` (the share
        of unit-image pairs whose derivative is under ``flat_below`` times its peak) and ``units_always_flat`` (the
        share of units that are flat on every image).
    """
    derivative, peak = DERIVATIVES[model.activation]
    layers = list(model.hidden_layers)
    inputs = []  # each hidden layer's output, the activation's input, as the model's own forward computes it
    hooks = [layer.register_forward_hook(lambda module, args, output: inputs.append(output)) for layer in layers]
    derivative_sums = [torch.zeros((), device=device) for _ in layers]
    flat_counts = [torch.zeros((), device=device) for _ in layers]
    always_flat = [torch.ones(layer.weight.shape[0], dtype=torch.bool, device=device) for layer in layers]
    images_seen = 0
    was_training = model.training
    model.eval()
    try:
        for item in epoch_items(loader):
            images, _ = prepare_batch(loader, item, device)
            inputs.clear()
            model(images)
            for i, z in enumerate(inputs):  # z: [batch, units]
                slope = derivative(z)
                flat = slope < FLAT_BELOW * peak
                derivative_sums[i] += slope.sum()
                flat_counts[i] += flat.sum()
                always_flat[i] &= flat.all(0)
            images_seen += len(images)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    pairs = [images_seen * len(always) for always in always_flat]
    return {
        "activation": model.activation, "derivative_peak": peak, "flat_below": FLAT_BELOW, "images": images_seen,
        # a mean derivative is null where some input was not finite (JSON has no NaN)
        "layers": [{"units": len(always), "mean_derivative": finite_or_none(total.item() / count),
                    "flat_share": flat.item() / count, "units_always_flat": always.float().mean().item()}
                   for total, flat, always, count in zip(derivative_sums, flat_counts, always_flat, pairs)],
    }


def summary_line(stats):
    """``hidden_unit_statistics``' result in one line for the console."""
    def listed(key):
        return ", ".join("-" if layer[key] is None else f"{layer[key]:.2f}" for layer in stats["layers"])
    return (f"hidden layers ({stats['activation']}) on {stats['images']} validation images: mean derivative "
            f"{listed('mean_derivative')}; flat share (derivative under {stats['flat_below']:g} x its peak) "
            f"{listed('flat_share')}")

"""Helpers of the course template: plots, seeding, device moves, the loss and the accuracy."""
import json
import os
import random

import numpy as np
import torch


def generate_plots(list_of_dirs, legend_names, save_path):
    """Plot train/validation loss and accuracy against epoch, one line per run.

    Args:
        list_of_dirs: run folders, each holding a ``results.json``.
        legend_names: one legend label per folder.
        save_path: folder that receives ``train_accs.png``, ``valid_accs.png``,
            ``train_losses.png`` and ``valid_losses.png``.
    """
    from matplotlib.figure import Figure

    assert len(list_of_dirs) == len(legend_names), "Names and log directories must have same length"
    data = {}
    for logdir, name in zip(list_of_dirs, legend_names):
        json_path = os.path.join(logdir, 'results.json')
        assert os.path.exists(json_path), f"No json file in {logdir}"
        with open(json_path, 'r') as f:
            data[name] = json.load(f)

    os.makedirs(save_path, exist_ok=True)
    for yaxis in ['train_accs', 'valid_accs', 'train_losses', 'valid_losses']:
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        for name in data:
            values = [np.nan if v is None else v for v in data[name][yaxis]]
            ax.plot(range(1, len(values) + 1), values, label=name)
        ax.legend()
        ax.set_xlabel('epochs')
        ax.set_ylabel(yaxis.replace('_', ' '))
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(save_path, f'{yaxis}.png'))


def seed_experiment(seed):
    """Seed python's, numpy's and torch's random number generators (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def to_device(tensors, device):
    """Move a tensor, a dict of tensors or a list ``[images, labels]`` to ``device``."""
    if isinstance(tensors, torch.Tensor):
        return tensors.to(device=device)
    elif isinstance(tensors, dict):
        return {key: to_device(tensor, device) for key, tensor in tensors.items()}
    elif isinstance(tensors, list):
        return [to_device(tensor, device) for tensor in tensors]
    else:
        raise NotImplementedError("Unknown type {0}".format(type(tensors)))


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of a batch, from a log-softmax computed with the log-sum-exp trick.

    Args:
        logits: ``[batch, classes]`` unnormalised scores.
        labels: ``[batch]`` class indices.

    Returns:
        a scalar tensor.
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # half-precision log-sum-exp loses digits that the loss needs
    # subtract the row maximum first: exp() then never overflows, and the log-probabilities keep the
    # digits that adding and removing a large log-sum-exp would round away (the max cancels in the gradient)
    shifted = logits - logits.max(dim=1, keepdim=True).values.detach()  # [batch, classes], max 0 per row
    log_probs = shifted - torch.log(torch.exp(shifted).sum(dim=1, keepdim=True))
    nll = -log_probs.gather(1, labels.long().unsqueeze(1)).squeeze(1)  # [batch]
    return nll.mean()


def compute_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of the batch whose highest logit is the label, as a scalar tensor."""
    return (logits.argmax(dim=1) == labels).float().mean()

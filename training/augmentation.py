"""Batched data augmentation: every image of a batch transformed at once, by tensor operations, from a
table of uniform draws (``augmentation_noise``) so that an epoch's randomness is drawn in one kernel and a
CUDA-graph replay sees the same augmentation as an eager step.

Three recipes (``--augment``), each with the distribution of its torchvision counterpart in
``pipelines.torchvision_batches``:
- ``template``: RandomHorizontalFlip + RandomResizedCrop(scale 0.8-1.0, ratio 0.9-1.1), the course template's;
- ``padcrop``: RandomHorizontalFlip + RandomCrop(32, padding=4, reflect), the usual CIFAR-10 recipe;
- ``padcrop_cutout``: ``padcrop``, then one 16x16 square set to the data set's mean (Cutout, DeVries & Taylor 2017).

And two ways to mix a batch with itself in reverse order (``--mix``), whose labels the loss then weighs:
``mixup`` (Zhang et al. 2018) and ``cutmix`` (Yun et al. 2019).
"""
import math

import torch
import torch.nn.functional as F

CROP_SCALE = (0.8, 1.0)
CROP_RATIO = (0.9, 1.1)
CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop.get_params tries this many boxes
CROP_PADDING = 4
CUTOUT_SIZE = 16


# the columns of the noise table: one row of uniforms per image
AREAS = slice(0, CROP_ATTEMPTS)                        # RandomResizedCrop's attempts: areas,
LOG_RATIOS = slice(CROP_ATTEMPTS, 2 * CROP_ATTEMPTS)   # and aspect ratios
TOP, LEFT, FLIP = 2 * CROP_ATTEMPTS, 2 * CROP_ATTEMPTS + 1, 2 * CROP_ATTEMPTS + 2
CUTOUT_Y, CUTOUT_X = 2 * CROP_ATTEMPTS + 3, 2 * CROP_ATTEMPTS + 4               # the cutout's centre
MIX = slice(2 * CROP_ATTEMPTS + 5, 2 * CROP_ATTEMPTS + 8)  # lambda, box centre y, x: read from a batch's first row
NOISE_COLUMNS = 2 * CROP_ATTEMPTS + 8


def augmentation_noise(batch, device=None):
    """The uniform draws that decide one batch's crops, flips, cutouts and mixing, ``[batch, NOISE_COLUMNS]``.

    Drawing them apart from the augmentation lets a whole epoch's randomness come from one kernel,
    and makes a CUDA-graph replay and an eager step see the same augmentation.
    """
    return torch.rand(batch, NOISE_COLUMNS, device=device)


def sample_crop_boxes(noise, height, width, scale=CROP_SCALE, ratio=CROP_RATIO):
    """One RandomResizedCrop box per sample, with torchvision's distribution.

    Each sample tries ``CROP_ATTEMPTS`` boxes of random area and aspect ratio and keeps the first
    that fits; a sample where none fits falls back to the central crop, as torchvision does.

    Args:
        noise: uniforms in [0, 1), ``[batch, NOISE_COLUMNS]`` (see ``augmentation_noise``).

    Returns:
        ``(top, left, crop_height, crop_width)``, each an int64 tensor ``[batch]``.
    """
    area = height * width
    target_area = area * (scale[0] + (scale[1] - scale[0]) * noise[:, AREAS])
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_low + (log_high - log_low) * noise[:, LOG_RATIOS])
    crop_w = torch.round(torch.sqrt(target_area * aspect)).long()
    crop_h = torch.round(torch.sqrt(target_area / aspect)).long()
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)  # [batch, attempts]
    first = fits.long().argmax(dim=1, keepdim=True)  # index of the first fitting attempt (0 if none)
    crop_w = crop_w.gather(1, first).squeeze(1)
    crop_h = crop_h.gather(1, first).squeeze(1)

    in_ratio = width / height
    if in_ratio < min(ratio):
        fallback_w, fallback_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fallback_w, fallback_h = int(round(height * max(ratio))), height
    else:
        fallback_w, fallback_h = width, height
    any_fit = fits.any(dim=1)
    crop_w = torch.where(any_fit, crop_w, torch.full_like(crop_w, fallback_w))
    crop_h = torch.where(any_fit, crop_h, torch.full_like(crop_h, fallback_h))

    # a uniform integer offset in [0, size - crop]; the fallback is centred
    top = (noise[:, TOP] * (height - crop_h + 1)).long().clamp_max(height - crop_h)
    left = (noise[:, LEFT] * (width - crop_w + 1)).long().clamp_max(width - crop_w)
    top = torch.where(any_fit, top, (height - crop_h) // 2)
    left = torch.where(any_fit, left, (width - crop_w) // 2)
    return top, left, crop_h, crop_w


def random_resized_crop_flip(images, noise=None, size=32, scale=CROP_SCALE, ratio=CROP_RATIO):
    """RandomHorizontalFlip + RandomResizedCrop on a whole batch, parameters drawn per sample.

    The crop is resized with bilinear interpolation (pixel centres aligned and samples kept inside
    the crop, as PIL's resize of the cropped image does) by one ``grid_sample`` call.

    Args:
        images: ``[batch, channels, height, width]``, any dtype (uint8 for stored CIFAR-10).
        noise: the batch's uniforms ``[batch, NOISE_COLUMNS]``; drawn here when not given.

    Returns:
        float32 ``[batch, channels, size, size]`` on the value scale of the input.
    """
    batch, channels, height, width = images.shape
    device = images.device
    if noise is None:
        noise = augmentation_noise(batch, device)
    top, left, crop_h, crop_w = sample_crop_boxes(noise, height, width, scale, ratio)
    flip = noise[:, FLIP] < 0.5
    # output pixel u samples the crop at x = left + (u + 0.5) * crop_w / size - 0.5, kept inside the
    # crop as PIL's resize of the cropped image does; grid_sample wants (2 x + 1) / W - 1
    steps = torch.arange(size, device=device, dtype=torch.float32) + 0.5                 # [size]
    mirrored = torch.where(flip.unsqueeze(1), size - steps, steps)                      # [batch, size]
    x = left.unsqueeze(1) + mirrored * (crop_w / size).unsqueeze(1) - 0.5
    x = torch.minimum(torch.maximum(x, left.unsqueeze(1).float()), (left + crop_w - 1).unsqueeze(1).float())
    y = top.unsqueeze(1) + steps * (crop_h / size).unsqueeze(1) - 0.5
    y = torch.minimum(torch.maximum(y, top.unsqueeze(1).float()), (top + crop_h - 1).unsqueeze(1).float())
    x, y = (2 * x + 1) / width - 1, (2 * y + 1) / height - 1
    grid = torch.stack(torch.broadcast_tensors(x.unsqueeze(1), y.unsqueeze(2)), dim=-1)  # [batch, size, size, 2]
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def _reflect(position, size):
    """Mirror positions up to ``size - 1`` outside ``[0, size)`` back inside, edge not repeated (reflect padding)."""
    position = position.abs()
    return torch.where(position > size - 1, 2 * (size - 1) - position, position)


def pad_crop_flip(images, noise, pad=CROP_PADDING):
    """RandomCrop(size, padding=pad, padding_mode="reflect") + RandomHorizontalFlip on a whole batch.

    Each image moves by a uniform whole number of pixels in ``[-pad, pad]`` each way, its border mirrored
    in, and is mirrored left-right with probability one half: one gather for the batch, no padded copy.

    Args:
        images: ``[batch, channels, height, width]``, any dtype.
        noise: the batch's uniforms ``[batch, NOISE_COLUMNS]``.

    Returns:
        float32 ``[batch, channels, height, width]`` on the value scale of the input.
    """
    batch, channels, height, width = images.shape
    device = images.device
    top = (noise[:, TOP] * (2 * pad + 1)).long().clamp_max(2 * pad)  # offset in the padded image, 0..2 pad
    left = (noise[:, LEFT] * (2 * pad + 1)).long().clamp_max(2 * pad)
    flip = noise[:, FLIP] < 0.5
    columns = torch.arange(width, device=device)
    columns = torch.where(flip.unsqueeze(1), width - 1 - columns, columns)                       # [batch, width]
    rows = _reflect(top.unsqueeze(1) - pad + torch.arange(height, device=device), height)        # [batch, height]
    columns = _reflect(left.unsqueeze(1) - pad + columns, width)                                 # [batch, width]
    samples = torch.arange(batch, device=device).view(-1, 1, 1, 1)
    planes = torch.arange(channels, device=device).view(1, -1, 1, 1)
    return images[samples, planes, rows.view(batch, 1, height, 1), columns.view(batch, 1, 1, width)].float()


def cutout(images, noise, size=CUTOUT_SIZE):
    """Set one ``size`` x ``size`` square per image to zero (the mean, on normalised images), its centre
    uniform over the image and the square clipped at the border, as in DeVries & Taylor's code.

    Args:
        images: normalised float ``[batch, channels, height, width]``.
        noise: the batch's uniforms ``[batch, NOISE_COLUMNS]``.
    """
    batch, _, height, width = images.shape
    centre_y = (noise[:, CUTOUT_Y] * height).long().clamp_max(height - 1).unsqueeze(1)
    centre_x = (noise[:, CUTOUT_X] * width).long().clamp_max(width - 1).unsqueeze(1)
    rows = torch.arange(height, device=images.device)
    columns = torch.arange(width, device=images.device)
    in_rows = (rows >= centre_y - size // 2) & (rows < centre_y + size - size // 2)             # [batch, height]
    in_columns = (columns >= centre_x - size // 2) & (columns < centre_x + size - size // 2)     # [batch, width]
    return images.masked_fill((in_rows.unsqueeze(2) & in_columns.unsqueeze(1)).unsqueeze(1), 0.0)


class Cutout:
    """``cutout`` as a transform of one normalised ``[channels, height, width]`` image (torchvision pipeline)."""

    def __init__(self, size=CUTOUT_SIZE):
        """
        Args:
            size: side in pixels of the square set to the mean (zero once normalised).
        """
        self.size = size

    def __call__(self, image):
        return cutout(image.unsqueeze(0), augmentation_noise(1), self.size).squeeze(0)


# --augment: the crop and flip, and whether a cutout follows normalisation
AUGMENTATIONS = {
    "template": (random_resized_crop_flip, False),
    "padcrop": (pad_crop_flip, False),
    "padcrop_cutout": (pad_crop_flip, True),
}


MIXES = ("none", "mixup", "cutmix")


def mix_batch(images, mix_noise, kind):
    """Mix every image with its partner in the reversed batch (batches come in random order, so the
    partner is random), with one weight ``lam`` per batch drawn uniformly from [0, 1) (Beta(1, 1)).

    ``mixup`` blends whole images: ``lam * image + (1 - lam) * partner``. ``cutmix`` pastes the partner's
    pixels into a box of ``1 - lam`` of the image, centred uniformly and clipped at the border, then sets
    ``lam`` to the share of the image's own pixels left, as Yun et al.'s code does. No host synchronisation,
    so a CUDA graph can record it.

    Args:
        images: normalised float ``[batch, channels, height, width]``.
        mix_noise: three uniforms ``[3]``: ``lam``, then the box centre's row and column.
        kind: ``mixup`` or ``cutmix``.

    Returns:
        ``(mixed images, lam)``: the loss weighs each image's own label by ``lam`` (a 0-dim tensor) and
        its partner's by ``1 - lam``.
    """
    lam = mix_noise[0]
    partner = images.flip(0)
    if kind == "mixup":
        return lam * images + (1 - lam) * partner, lam
    _, _, height, width = images.shape
    side = torch.sqrt(1 - lam)
    cut_h, cut_w = (side * height).long(), (side * width).long()
    centre_y = (mix_noise[1] * height).long().clamp_max(height - 1)
    centre_x = (mix_noise[2] * width).long().clamp_max(width - 1)
    rows = torch.arange(height, device=images.device)
    columns = torch.arange(width, device=images.device)
    in_rows = (rows >= centre_y - cut_h // 2) & (rows < centre_y + cut_h // 2)                  # clipped at the border
    in_columns = (columns >= centre_x - cut_w // 2) & (columns < centre_x + cut_w // 2)
    box = in_rows.unsqueeze(1) & in_columns.unsqueeze(0)                                        # [height, width]
    return torch.where(box, partner, images), 1 - box.sum() / (height * width)

"""The two ways to feed batches: whole-tensor batches on the training device, and the template's
DataLoader with PIL transforms. Both yield ``[images, labels]`` lists of normalised float images.
"""
import math

import torch
import torch.nn.functional as F

CIFAR10_MEAN = (0.49139968, 0.48215841, 0.44653091)
CIFAR10_STD = (0.24703223, 0.24348513, 0.26158784)
CROP_SCALE = (0.8, 1.0)
CROP_RATIO = (0.9, 1.1)
CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop.get_params tries this many boxes


NOISE_COLUMNS = 2 * CROP_ATTEMPTS + 3  # per sample: areas, log-ratios, top, left, flip


def augmentation_noise(batch, device=None):
    """The uniform draws that decide one batch's crops and flips, ``[batch, NOISE_COLUMNS]``.

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
    target_area = area * (scale[0] + (scale[1] - scale[0]) * noise[:, :CROP_ATTEMPTS])
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_low + (log_high - log_low) * noise[:, CROP_ATTEMPTS:2 * CROP_ATTEMPTS])
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
    top = (noise[:, -3] * (height - crop_h + 1)).long().clamp_max(height - crop_h)
    left = (noise[:, -2] * (width - crop_w + 1)).long().clamp_max(width - crop_w)
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
    flip = noise[:, -1] < 0.5
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


class Normalize:
    """Map float pixels on the 0..255 scale to the template's normalised values, ``(x / 255 - mean) / std``."""

    def __init__(self, device):
        std = torch.tensor(CIFAR10_STD, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std)
        self.shift = -torch.tensor(CIFAR10_MEAN, device=device).view(1, -1, 1, 1) / std

    def __call__(self, images_0_255):
        return images_0_255 * self.scale + self.shift


class TensorBatches:
    """Batches cut from one uint8 image tensor that lives on the training device.

    Shuffling is one ``randperm`` on that device per epoch and augmentation is batched, so no
    Python code runs per image. Yields ``[images float32 [B, 3, 32, 32], labels int64 [B]]``.
    """

    def __init__(self, images, labels, batch_size, device, train):
        """
        Args:
            images: uint8 ``[N, 3, 32, 32]``.
            labels: int64 ``[N]``.
            batch_size: images per batch; the last batch holds the remainder.
            device: where the tensors live and the batches are made.
            train: shuffle and augment (training) or keep order, no augmentation (evaluation).
        """
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.train = train
        self.normalize = Normalize(self.device)

    def __len__(self):
        return math.ceil(len(self.labels) / self.batch_size)

    def plan(self):
        """One epoch's work as ``(index, noise)`` pairs, one per batch: which images, and the uniforms
        that augment them. Training draws a fresh permutation and noise table (two kernels per epoch)."""
        count = len(self.labels)
        if not self.train:
            order = torch.arange(count, device=self.device)
            return [(order[start:start + self.batch_size], None) for start in range(0, count, self.batch_size)]
        order = torch.randperm(count, device=self.device)
        noise = augmentation_noise(count, self.device)
        return [(order[start:start + self.batch_size], noise[start:start + self.batch_size])
                for start in range(0, count, self.batch_size)]

    def make_batch(self, index, noise=None):
        """Gather, augment (when ``noise`` is given) and normalise the images at ``index``."""
        images = self.images[index]
        images = images.float() if noise is None else random_resized_crop_flip(images, noise)
        return [self.normalize(images), self.labels[index]]

    def __iter__(self):
        for index, noise in self.plan():
            yield self.make_batch(index, noise)


class _PILImages(torch.utils.data.Dataset):
    """uint8 ``[N, 3, 32, 32]`` images served one by one as PIL images through ``transform``."""

    def __init__(self, images, labels, transform):
        self.images = images.permute(0, 2, 3, 1).numpy()  # HWC, as PIL wants
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        from PIL import Image
        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def torchvision_batches(images, labels, batch_size, train, num_workers, pin_memory=False):
    """The template's pipeline: a DataLoader over PIL images with torchvision transforms."""
    from torchvision import transforms

    steps = [transforms.RandomHorizontalFlip(),
             transforms.RandomResizedCrop(size=(32, 32), scale=CROP_SCALE, ratio=CROP_RATIO)] if train else []
    transform = transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    return torch.utils.data.DataLoader(_PILImages(images, labels, transform), batch_size=batch_size,
                                       shuffle=train, num_workers=num_workers, pin_memory=pin_memory)

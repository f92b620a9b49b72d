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


def sample_crop_boxes(batch, height, width, scale=CROP_SCALE, ratio=CROP_RATIO, device=None):
    """Draw one RandomResizedCrop box per sample, with torchvision's distribution.

    Each sample tries ``CROP_ATTEMPTS`` boxes of random area and aspect ratio and keeps the first
    that fits; a sample where none fits falls back to the central crop, as torchvision does.

    Returns:
        ``(top, left, crop_height, crop_width)``, each an int64 tensor ``[batch]``.
    """
    area = height * width
    target_area = area * torch.empty(batch, CROP_ATTEMPTS, device=device).uniform_(*scale)
    log_ratio = torch.empty(batch, CROP_ATTEMPTS, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(log_ratio)
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
    top = (torch.rand(batch, device=device) * (height - crop_h + 1)).long().clamp_max(height - crop_h)
    left = (torch.rand(batch, device=device) * (width - crop_w + 1)).long().clamp_max(width - crop_w)
    top = torch.where(any_fit, top, (height - crop_h) // 2)
    left = torch.where(any_fit, left, (width - crop_w) // 2)
    return top, left, crop_h, crop_w


def random_resized_crop_flip(images, size=32, scale=CROP_SCALE, ratio=CROP_RATIO):
    """RandomHorizontalFlip + RandomResizedCrop on a whole batch, parameters drawn per sample.

    The crop is resized with bilinear interpolation (pixel centres aligned and samples kept inside
    the crop, as PIL's resize of the cropped image does) by one ``grid_sample`` call.

    Args:
        images: ``[batch, channels, height, width]``, any dtype (uint8 for stored CIFAR-10).

    Returns:
        float32 ``[batch, channels, size, size]`` on the value scale of the input.
    """
    batch, channels, height, width = images.shape
    device = images.device
    top, left, crop_h, crop_w = sample_crop_boxes(batch, height, width, scale, ratio, device)
    flip = torch.rand(batch, device=device) < 0.5
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

    def __iter__(self):
        count = len(self.labels)
        order = torch.randperm(count, device=self.device) if self.train else None
        for start in range(0, count, self.batch_size):
            if order is None:
                images = self.images[start:start + self.batch_size].float()
                labels = self.labels[start:start + self.batch_size]
            else:
                index = order[start:start + self.batch_size]
                images = random_resized_crop_flip(self.images[index])
                labels = self.labels[index]
            yield [self.normalize(images), labels]


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

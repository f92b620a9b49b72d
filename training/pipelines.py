"""The two ways to feed batches: whole-tensor batches on the training device, and the template's
DataLoader with PIL transforms. Both yield ``[images, labels]`` lists of normalised float images.
"""
import math
import warnings

import torch

from .augmentation import (AUGMENTATIONS, CROP_PADDING, CROP_RATIO, CROP_SCALE, CUTOUT_SIZE, Cutout,
                           augmentation_noise, cutout)
from .devices import usable_cpus

CIFAR10_MEAN = (0.49139968, 0.48215841, 0.44653091)
CIFAR10_STD = (0.24703223, 0.24348513, 0.26158784)


class Normalize:
    """Map float pixels on the 0..255 scale to the template's normalised values, ``(x / 255 - mean) / std``."""

    def __init__(self, device):
        """
        Args:
            device: where the images to normalise are.
        """
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

    def __init__(self, images, labels, batch_size, device, train, augment="template"):
        """
        Args:
            images: uint8 ``[N, 3, 32, 32]``.
            labels: int64 ``[N]``.
            batch_size: images per batch; the last batch holds the remainder.
            device: where the tensors live and the batches are made.
            train: shuffle and augment (training) or keep order, no augmentation (evaluation).
            augment: the training augmentation, a key of ``augmentation.AUGMENTATIONS``.
        """
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.train = train
        self.crop_flip, self.cutout = AUGMENTATIONS[augment]
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
        if noise is None:
            return [self.normalize(images.float()), self.labels[index]]
        images = self.normalize(self.crop_flip(images, noise))
        return [cutout(images, noise) if self.cutout else images, self.labels[index]]

    def __iter__(self):
        for index, noise in self.plan():
            yield self.make_batch(index, noise)


class _PILImages(torch.utils.data.Dataset):
    """uint8 ``[N, 3, 32, 32]`` images served one by one as PIL images through ``transform``."""

    def __init__(self, images, labels, transform):
        """
        Args:
            images: uint8 ``[N, 3, 32, 32]`` on the CPU.
            labels: ``[N]`` class indices.
            transform: applied to each PIL image (the template's torchvision transforms).
        """
        self.images = images.permute(0, 2, 3, 1).numpy()  # HWC, as PIL wants
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        from PIL import Image
        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


class _TemplateLoader(torch.utils.data.DataLoader):
    """torch's DataLoader, whose warning of more workers than CPUs ``torchvision_batches`` gives instead: torch gives
    it when each loader is built and again when one is first iterated, without the flag that changes it."""

    def check_worker_number_rationality(self):
        return


def torchvision_batches(images, labels, batch_size, train, num_workers, pin_memory=False, augment="template"):
    """The template's pipeline: a DataLoader over PIL images with torchvision transforms.

    ``augment`` (training only) picks the transforms that match ``TensorBatches``'s recipe of that name.
    """
    from torchvision import transforms

    cpus = usable_cpus()
    if cpus and num_workers > cpus:
        warnings.warn(f"--num_workers {num_workers} starts more DataLoader workers than the CPUs this process may use "
                      f"({cpus}), which can slow the loading or stall it; --num_workers {cpus} avoids that")

    resized_crop = transforms.RandomResizedCrop(size=(32, 32), scale=CROP_SCALE, ratio=CROP_RATIO)
    pad_crop = transforms.RandomCrop(32, padding=CROP_PADDING, padding_mode="reflect")
    crop = {"template": resized_crop, "padcrop": pad_crop, "padcrop_cutout": pad_crop}[augment]
    steps = [transforms.RandomHorizontalFlip(), crop] if train else []
    steps += [transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)]
    if train and AUGMENTATIONS[augment][1]:
        steps.append(Cutout(CUTOUT_SIZE))
    transform = transforms.Compose(steps)
    return _TemplateLoader(_PILImages(images, labels, transform), batch_size=batch_size, shuffle=train,
                           num_workers=num_workers, pin_memory=pin_memory)

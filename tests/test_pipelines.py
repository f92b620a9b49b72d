"""Batched augmentation and the two batch pipelines."""
import math

import torch
from torchvision import transforms

from training.pipelines import (CIFAR10_MEAN, CIFAR10_STD, Normalize, TensorBatches, augmentation_noise,
                                random_resized_crop_flip, sample_crop_boxes, torchvision_batches)


def test_crop_boxes_follow_torchvision_distribution():
    torch.manual_seed(0)
    top, left, height, width = sample_crop_boxes(augmentation_noise(20000), 32, 32)
    assert torch.all((height >= 1) & (height <= 32) & (width >= 1) & (width <= 32))
    assert torch.all((top >= 0) & (top + height <= 32) & (left >= 0) & (left + width <= 32))
    reference = torch.tensor([transforms.RandomResizedCrop.get_params(torch.zeros(1, 32, 32), [0.8, 1.0], [0.9, 1.1])
                              for _ in range(20000)], dtype=torch.float64)  # (top, left, height, width)
    ours = torch.stack([top, left, height, width], dim=1).double()
    torch.testing.assert_close(ours.mean(0), reference.mean(0), atol=0.06, rtol=0)
    torch.testing.assert_close(ours.std(0), reference.std(0), atol=0.06, rtol=0)
    area = (height * width).double() / 1024
    assert area.min() >= 0.8 - 2 * 32 / 1024 and area.max() <= 1.0  # rounding of a side moves the area a little


def test_crop_falls_back_to_the_centre_when_nothing_fits():
    top, left, height, width = sample_crop_boxes(augmentation_noise(50), 32, 32, scale=(2.0, 3.0), ratio=(1.0, 1.0))
    assert torch.all(height == 32) and torch.all(width == 32) and torch.all(top == 0) and torch.all(left == 0)


def test_augmentation_shapes_range_and_per_sample_parameters():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    batch = image.repeat(64, 1, 1, 1)
    out = random_resized_crop_flip(batch)
    assert out.shape == (64, 3, 32, 32) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255
    distinct = {tuple(sample.flatten()[:64].round().tolist()) for sample in out}
    assert len(distinct) > 32  # one copy of the same image, many different crops


def test_full_crop_is_the_image_or_its_mirror():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (200, 3, 32, 32), dtype=torch.uint8)
    out = random_resized_crop_flip(images, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    same = (out - images.float()).abs().amax(dim=(1, 2, 3)) < 1e-3
    mirrored = (out - images.flip(3).float()).abs().amax(dim=(1, 2, 3)) < 1e-3
    assert torch.all(same | mirrored)
    assert 70 < mirrored.sum() < 130  # flip with probability one half


def test_crop_matches_torchvision_resized_crop_for_a_given_box():
    import torchvision.transforms.functional as TF
    torch.manual_seed(1)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    noise = augmentation_noise(8)
    top, left, height, width = sample_crop_boxes(noise, 32, 32)
    assert torch.any((height != 32) | (width != 32))  # real crops, not only the identity
    ours = random_resized_crop_flip(images, noise)
    for i in range(8):
        expected = TF.resized_crop(images[i:i + 1].float(), int(top[i]), int(left[i]), int(height[i]), int(width[i]),
                                   [32, 32], interpolation=transforms.InterpolationMode.BILINEAR, antialias=False)
        if noise[i, -1] < 0.5:
            expected = expected.flip(3)
        torch.testing.assert_close(ours[i:i + 1], expected, atol=1e-3, rtol=0)


def test_same_noise_gives_the_same_augmentation():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    noise = augmentation_noise(16)
    assert torch.equal(random_resized_crop_flip(images, noise), random_resized_crop_flip(images, noise.clone()))
    assert not torch.equal(random_resized_crop_flip(images, noise), random_resized_crop_flip(images, augmentation_noise(16)))


def test_normalize_matches_template_transform():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    ours = Normalize("cpu")(images.float())
    reference = transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)(images.float() / 255)
    torch.testing.assert_close(ours, reference)


def test_tensor_batches_cover_every_image_once():
    images = torch.arange(10).view(10, 1, 1, 1).expand(10, 3, 32, 32).to(torch.uint8)
    labels = torch.arange(10)
    batches = TensorBatches(images, labels, batch_size=4, device="cpu", train=False)
    assert len(batches) == 3
    seen = torch.cat([y for _, y in batches])
    assert seen.tolist() == list(range(10))
    torch.manual_seed(0)
    train = TensorBatches(images, labels, batch_size=4, device="cpu", train=True)
    order = torch.cat([y for _, y in train])
    assert sorted(order.tolist()) == list(range(10)) and order.tolist() != list(range(10))
    for x, y in train:
        # augmentation keeps each image with its own label: the constant image k stays the value k
        pixel = x * torch.tensor(CIFAR10_STD).view(1, 3, 1, 1) + torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
        torch.testing.assert_close(pixel * 255, y.view(-1, 1, 1, 1).float().expand_as(pixel), atol=1e-3, rtol=0)


def test_both_pipelines_give_the_same_evaluation_batches():
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (10,))
    ours = list(TensorBatches(images, labels, 4, "cpu", train=False))
    template = list(torchvision_batches(images, labels, 4, train=False, num_workers=0))
    assert len(ours) == len(template) == 3
    for (x, y), (tx, ty) in zip(ours, template):
        torch.testing.assert_close(x, tx, atol=1e-5, rtol=1e-5)
        assert torch.equal(y, ty)


def test_torchvision_training_batches_are_augmented_and_normalised():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (16,))
    (x, y), = list(torchvision_batches(images, labels, 16, train=True, num_workers=0))
    assert x.shape == (16, 3, 32, 32) and sorted(y.tolist()) == sorted(labels.tolist())
    low = (0 - max(CIFAR10_MEAN)) / min(CIFAR10_STD)
    high = (1 - min(CIFAR10_MEAN)) / min(CIFAR10_STD)
    assert x.min() >= low - 1e-4 and x.max() <= high + 1e-4
    assert not math.isclose(float(x.mean()), 0.0, abs_tol=1e-9)

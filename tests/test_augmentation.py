"""Batched augmentation against torchvision's transforms of the same name."""
import torch
import torch.nn.functional as F
from torchvision import transforms

from training.augmentation import (CUTOUT_SIZE, Cutout, augmentation_noise, cutout, pad_crop_flip,
                                   random_resized_crop_flip, sample_crop_boxes)


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


def test_pad_crop_matches_torchvision_reflect_padded_crop_and_flip():
    torch.manual_seed(2)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    noise = augmentation_noise(64)
    ours = pad_crop_flip(images, noise)
    assert ours.dtype == torch.float32 and ours.shape == images.shape
    padded = F.pad(images.float(), (4, 4, 4, 4), mode="reflect")  # what RandomCrop(padding_mode="reflect") crops
    top, left = (noise[:, -3] * 9).long(), (noise[:, -2] * 9).long()
    for i in range(64):
        expected = padded[i, :, top[i]:top[i] + 32, left[i]:left[i] + 32]
        if noise[i, -1] < 0.5:
            expected = expected.flip(2)
        assert torch.equal(ours[i], expected)


def test_pad_crop_offsets_are_uniform_and_flip_is_fair():
    torch.manual_seed(0)
    noise = augmentation_noise(18000)
    ramp = torch.arange(32, dtype=torch.uint8).view(1, 1, 1, 32).expand(18000, 1, 32, 32)
    shifted = pad_crop_flip(ramp, noise)
    unflipped = noise[:, -1] >= 0.5
    offsets = shifted[unflipped, 0, 0, 8].long() - 8  # column 8 reads column 8 + offset, no reflection there
    counts = torch.bincount(offsets + 4, minlength=9)
    assert counts.numel() == 9 and torch.all((counts - unflipped.sum() / 9).abs() < 0.1 * unflipped.sum() / 9)
    assert 0.48 < unflipped.float().mean() < 0.52


def test_cutout_zeroes_one_square_clipped_at_the_border():
    torch.manual_seed(3)
    images = torch.ones(500, 3, 32, 32)
    noise = augmentation_noise(500)
    out = cutout(images, noise)
    centre_y, centre_x = (noise[:, 0] * 32).long(), (noise[:, 1] * 32).long()
    half = CUTOUT_SIZE // 2
    rows = (centre_y + half).clamp(max=32) - (centre_y - half).clamp(min=0)
    columns = (centre_x + half).clamp(max=32) - (centre_x - half).clamp(min=0)
    assert torch.equal((out == 0).sum(dim=(1, 2, 3)), 3 * rows * columns)
    assert torch.all(out[torch.arange(500), :, centre_y, centre_x] == 0)
    assert torch.all((out == 0) | (out == 1))
    assert (rows * columns).max() == CUTOUT_SIZE ** 2 and (rows * columns).min() >= (CUTOUT_SIZE // 2) ** 2


def test_cutout_transform_takes_one_image():
    image = torch.ones(3, 32, 32)
    out = Cutout()(image)
    assert out.shape == image.shape and 3 * (CUTOUT_SIZE // 2) ** 2 <= int((out == 0).sum()) <= 3 * CUTOUT_SIZE ** 2

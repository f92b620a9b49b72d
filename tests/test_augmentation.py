"""Batched augmentation against torchvision's transforms of the same name."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torchvision import transforms

from training.augmentation import (AREAS, AUGMENTATIONS, CUTOUT_SIZE, CUTOUT_X, CUTOUT_Y, FLIP, LEFT, LOG_RATIOS, MIX,
                                   MIXES, NOISE_COLUMNS, TOP, Cutout, augmentation_noise, cutout, mix_batch,
                                   pad_crop_flip, random_resized_crop_flip, sample_crop_boxes)


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


@pytest.mark.parametrize("scale", [(2.0, 3.0), (1e-4, 2e-4)])  # boxes larger than the image; sides that round to 0
def test_crop_falls_back_to_the_centre_when_nothing_fits(scale):
    top, left, height, width = sample_crop_boxes(augmentation_noise(50), 32, 32, scale=scale, ratio=(1.0, 1.0))
    assert torch.all(height == 32) and torch.all(width == 32) and torch.all(top == 0) and torch.all(left == 0)


@pytest.mark.parametrize("height, width", [(32, 64), (64, 32), (40, 38)])
def test_the_fallback_of_an_image_of_another_shape_is_torchvisions(height, width):
    fallback = transforms.RandomResizedCrop.get_params(torch.zeros(1, height, width), [2.0, 3.0], [0.9, 1.1])
    boxes = sample_crop_boxes(augmentation_noise(3), height, width, scale=(2.0, 3.0))  # no box fits: the fallback
    assert [box.tolist() for box in boxes] == [[value] * 3 for value in fallback]


def test_each_sample_falls_back_on_its_own_and_the_largest_uniform_keeps_its_box_inside():
    noise = torch.full((2, NOISE_COLUMNS), 0.5)
    noise[0, AREAS], noise[0, LOG_RATIOS] = 0.999, 0.999  # about the whole area at ratio 1.1: 34 pixels wide
    noise[1, AREAS] = 0.0  # 80% of the area at ratio 1: a 29 x 29 box, which fits
    noise[1, [TOP, LEFT]] = torch.nextafter(torch.tensor(1.0), torch.tensor(0.0))  # the largest uniform below 1
    top, left, height, width = sample_crop_boxes(noise, 32, 32)
    assert (top.tolist(), left.tolist(), height.tolist(), width.tolist()) == ([0, 3], [0, 3], [32, 29], [32, 29])


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
        if noise[i, FLIP] < 0.5:
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
    top, left = (noise[:, TOP] * 9).long(), (noise[:, LEFT] * 9).long()
    for i in range(64):
        expected = padded[i, :, top[i]:top[i] + 32, left[i]:left[i] + 32]
        if noise[i, FLIP] < 0.5:
            expected = expected.flip(2)
        assert torch.equal(ours[i], expected)


def test_pad_crop_offsets_are_uniform_and_flip_is_fair():
    torch.manual_seed(0)
    noise = augmentation_noise(18000)
    ramp = torch.arange(32, dtype=torch.uint8).view(1, 1, 1, 32).expand(18000, 1, 32, 32)
    shifted = pad_crop_flip(ramp, noise)
    unflipped = noise[:, FLIP] >= 0.5
    offsets = shifted[unflipped, 0, 0, 8].long() - 8  # column 8 reads column 8 + offset, no reflection there
    counts = torch.bincount(offsets + 4, minlength=9)
    assert counts.numel() == 9 and torch.all((counts - unflipped.sum() / 9).abs() < 0.1 * unflipped.sum() / 9)
    assert 0.48 < unflipped.float().mean() < 0.52


def test_cutout_zeroes_one_square_clipped_at_the_border():
    torch.manual_seed(3)
    images = torch.ones(500, 3, 32, 32)
    noise = augmentation_noise(500)
    out = cutout(images, noise)
    centre_y, centre_x = (noise[:, CUTOUT_Y] * 32).long(), (noise[:, CUTOUT_X] * 32).long()
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


def test_mixup_blends_each_image_with_its_partner_in_the_reversed_batch():
    images = torch.randn(6, 3, 32, 32)
    mixed, lam = mix_batch(images, torch.tensor([0.3, 0.5, 0.5]), "mixup")
    assert lam.item() == pytest.approx(0.3)
    torch.testing.assert_close(mixed, 0.3 * images + 0.7 * images.flip(0))


@pytest.mark.parametrize("lam, centre, box", [
    (0.75, (0.5, 0.5), (8, 24, 8, 24)),     # side sqrt(0.25) * 32 = 16 around (16, 16)
    (0.75, (0.0, 0.99), (0, 8, 23, 32)),    # the same box clipped at the top right corner
    (0.75, (0.99, 0.0), (23, 32, 0, 8)),    # and at the bottom left one: the centre may be the last row
    (0.97, (0.5, 0.5), (14, 18, 14, 18)),   # int(sqrt(0.03) * 32) = 5, halved to 2 each way: as Yun et al. round
    (0.999, (0.5, 0.5), (16, 16, 16, 16)),  # int(sqrt(0.001) * 32) = 1, halved to 0: no box, as in Yun et al.
])
def test_cutmix_pastes_a_box_of_the_partner_and_weighs_what_is_left(lam, centre, box):
    images = torch.randn(4, 3, 32, 32)
    mixed, weight = mix_batch(images, torch.tensor([lam, *centre]), "cutmix")
    top, bottom, left, right = box
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[top:bottom, left:right] = True
    assert torch.equal(mixed[:, :, inside], images.flip(0)[:, :, inside])
    assert torch.equal(mixed[:, :, ~inside], images[:, :, ~inside])
    assert weight.item() == pytest.approx(1 - inside.sum().item() / 1024)


def test_every_draw_has_its_own_column_of_the_noise_table():
    columns = range(NOISE_COLUMNS)
    used = [*columns[AREAS], *columns[LOG_RATIOS], TOP, LEFT, FLIP, CUTOUT_Y, CUTOUT_X, *columns[MIX]]
    assert sorted(used) == list(columns) and augmentation_noise(5)[0, MIX].shape == (3,)
    assert augmentation_noise(5, "meta").device.type == "meta"  # drawn where the batch is (the GPU's own kernel)


class _CPUTensorsSeen(TorchDispatchMode):
    """Notes every operation that is given a tensor on the CPU."""

    def __init__(self):
        super().__init__()
        self.operations = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        given = tree_leaves((args, kwargs))  # an index's tensors come in a list
        if any(isinstance(value, torch.Tensor) and value.device.type == "cpu" for value in given):
            self.operations.append(str(func))
        return func(*args, **(kwargs or {}))


def test_every_augmentation_and_mix_keeps_to_the_batchs_device():
    """On the GPU the whole augmentation runs where the batch is; a tensor made on the CPU by default (an arange
    without its device) would fail there or copy every step. The meta device stands in for the GPU: mixing its
    tensors with CPU ones fails here as it would there, except as an index or a 0-dim scalar, which a GPU copies
    over at every step (and a CUDA graph cannot record), so no operation may be given a CPU tensor."""
    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8, device="meta")
    noise = augmentation_noise(4, "meta")
    with _CPUTensorsSeen() as seen:
        for name, (augment, with_cutout) in AUGMENTATIONS.items():
            out = augment(images, noise)
            if with_cutout:
                out = cutout(out, noise)
            assert out.device.type == "meta" and out.shape == (4, 3, 32, 32), name
        for kind in MIXES[1:]:
            mixed, lam = mix_batch(images.float(), noise[0, MIX], kind)
            assert mixed.device.type == "meta" and lam.device.type == "meta", kind
    assert seen.operations == []

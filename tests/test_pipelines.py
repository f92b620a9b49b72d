"""The two batch pipelines: whole tensors on the device, and the template's DataLoader."""
import math
import warnings

import pytest
import torch
from torchvision import transforms

from training import pipelines
from training.augmentation import AUGMENTATIONS
from training.pipelines import CIFAR10_MEAN, CIFAR10_STD, Normalize, TensorBatches, torchvision_batches


def test_normalize_matches_template_transform():
    template_mean, template_std = (0.49139968, 0.48215841, 0.44653091), (0.24703223, 0.24348513, 0.26158784)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    ours = Normalize("cpu")(images.float())
    reference = transforms.Normalize(template_mean, template_std)(images.float() / 255)
    torch.testing.assert_close(ours, reference)
    assert (CIFAR10_MEAN, CIFAR10_STD) == (template_mean, template_std)  # torchvision_batches' Normalize too


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


def test_the_torchvision_pipeline_shuffles_training_batches_only_with_the_workers_asked_for():
    images = torch.zeros(64, 3, 32, 32, dtype=torch.uint8)
    labels = torch.arange(64)
    torch.manual_seed(0)
    train = torchvision_batches(images, labels, 16, train=True, num_workers=0)
    orders = [torch.cat([y for _, y in train]).tolist() for _ in range(2)]
    assert all(sorted(order) == list(range(64)) for order in orders)  # every image once per epoch
    assert orders[0] != list(range(64)) and orders[0] != orders[1]  # in a new order each epoch
    evaluation = torchvision_batches(images, labels, 16, train=False, num_workers=0)
    assert torch.cat([y for _, y in evaluation]).tolist() == list(range(64))
    assert torchvision_batches(images, labels, 16, train=True, num_workers=2).num_workers == 2


@pytest.mark.parametrize("cpus, workers, warned", [(4, 5, True), (4, 4, False), (4, 0, False), (None, 8, False)],
                         ids=["more than the CPUs", "as many", "none", "CPUs unknown"])
def test_the_torchvision_pipeline_warns_only_of_more_workers_than_usable_cpus(monkeypatch, cpus, workers, warned):
    monkeypatch.setattr(pipelines, "usable_cpus", lambda: cpus)
    images, labels = torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torchvision_batches(images, labels, 4, train=True, num_workers=workers)
    assert [str(w.message).split(" starts")[0] for w in caught] == ([f"--num_workers {workers}"] if warned else [])


def test_the_torchvision_pipeline_trains_with_the_templates_transforms():
    images, labels = torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64)
    flip, crop, *rest = torchvision_batches(images, labels, 4, train=True, num_workers=0).dataset.transform.transforms
    assert isinstance(flip, transforms.RandomHorizontalFlip) and flip.p == 0.5
    assert isinstance(crop, transforms.RandomResizedCrop)
    assert (tuple(crop.size), tuple(crop.scale), tuple(crop.ratio)) == ((32, 32), (0.8, 1.0), (0.9, 1.1))
    assert [type(step) for step in rest] == [transforms.ToTensor, transforms.Normalize]
    _, pad_crop, *_ = torchvision_batches(images, labels, 4, train=True, num_workers=0,
                                          augment="padcrop").dataset.transform.transforms
    assert (pad_crop.size, pad_crop.padding, pad_crop.padding_mode) == ((32, 32), 4, "reflect")


@pytest.mark.parametrize("augment", ["template", "padcrop", "padcrop_cutout"])
def test_both_pipelines_augment_each_recipe(augment):
    """A constant image stays constant under every crop and flip; a cutout sets one square to the mean (0)."""
    torch.manual_seed(0)
    images = torch.arange(40, 200, 10).view(16, 1, 1, 1).expand(16, 3, 32, 32).to(torch.uint8)
    labels = torch.arange(16)
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    expected = ((images.float() / 255 - mean) / std)
    tensor_batch, = list(TensorBatches(images, labels, 16, "cpu", train=True, augment=augment))
    template_batch, = list(torchvision_batches(images, labels, 16, train=True, num_workers=0, augment=augment))
    for x, y in (tensor_batch, template_batch):
        x = x.float()
        kept = (x - expected[y]).abs() < 1e-4
        assert torch.all(kept | (x == 0))
        cut = (~kept).sum(dim=(1, 2, 3))
        if augment == "padcrop_cutout":
            assert torch.all(cut >= 3 * 8 * 8) and torch.all(cut <= 3 * 16 * 16)
        else:
            assert torch.all(cut == 0)


@pytest.mark.parametrize("pipeline", ["tensor", "torchvision"])
def test_the_runner_trains_on_batch_size_augmented_batches_and_evaluates_eval_batch_size_ones(pipeline):
    import argparse

    from training.engine import make_batches

    args = argparse.Namespace(pipeline=pipeline, batch_size=4, eval_batch_size=7, num_workers=0, augment="padcrop")
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(10)
    train = make_batches(args, images, labels, True, torch.device("cpu"))
    evaluation = make_batches(args, images, labels, False, torch.device("cpu"))
    assert [len(y) for _, y in train] == [4, 4, 2] and [len(y) for _, y in evaluation] == [7, 3]
    if pipeline == "tensor":
        assert isinstance(train, TensorBatches) and train.train and not evaluation.train
        assert train.crop_flip is AUGMENTATIONS["padcrop"][0]
    else:
        assert isinstance(train, torch.utils.data.DataLoader) and not isinstance(evaluation, TensorBatches)
        assert not train.pin_memory  # page-locked memory only speeds copies to a GPU
        assert make_batches(args, images, labels, True, torch.device("cuda")).pin_memory
        assert isinstance(train.dataset.transform.transforms[1], transforms.RandomCrop)
        assert evaluation.dataset.transform.transforms[0].__class__ is transforms.ToTensor


def test_the_template_pipeline_loads_in_worker_processes_that_spawn():
    """macOS and Windows start DataLoader workers with ``spawn`` (Python 3.14 on Linux with ``forkserver``): the
    dataset and its transforms, cutout included, are pickled into each worker, so none may be a lambda or a
    local object. A spawned worker gives the training batches their shapes and labels, and the same evaluation
    batches as loading in this process. One worker serves both datasets: each spawn imports torch anew."""
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(12) % 10
    train, evaluation = (torchvision_batches(images, labels, 5, train=train, num_workers=0, augment="padcrop_cutout")
                         for train in (True, False))
    spawned = torch.utils.data.DataLoader(torch.utils.data.StackDataset(train.dataset, evaluation.dataset),
                                          batch_size=5, num_workers=1, multiprocessing_context="spawn")
    batches = list(spawned)
    assert [tuple(x.shape) for (x, _), _ in batches] == [(5, 3, 32, 32), (5, 3, 32, 32), (2, 3, 32, 32)]
    assert torch.cat([y for (_, y), _ in batches]).tolist() == labels.tolist() and len(evaluation) == len(batches)
    for (_, (x, y)), (expected_x, expected_y) in zip(batches, evaluation):
        torch.testing.assert_close(x, expected_x)
        assert torch.equal(y, expected_y)

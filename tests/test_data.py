"""The CIFAR-10 reader, the fetch step and the split, on fake data in the real on-disk format."""
import os
import pickle
import tarfile
import urllib.error

import numpy as np
import pytest
import torch

from training import cifar10
from training.cifar10 import load_cifar10, read_batch, split_train_valid
from training.errors import UserError
from training.fake_data import fake_images, write_batch, write_fake_cifar10


def test_reads_official_layout(fake_data_dir):
    data = load_cifar10(fake_data_dir)
    assert data.train_images.shape == (120, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.train_labels.shape == (120,) and data.train_labels.dtype == torch.int64
    assert data.test_images.shape == (30, 3, 32, 32)
    images, labels = fake_images(24, 0)  # what data_batch_1 was written from
    assert torch.equal(data.train_images[:24], torch.from_numpy(images))
    assert torch.equal(data.train_labels[:24], torch.from_numpy(labels))


def test_reads_python3_pickles_with_str_keys(tmp_path):
    """As ../shared/data/make_cifar10.py writes them (protocol 4, str keys, extra fields)."""
    images, labels = fake_images(5, 1)
    path = tmp_path / "batch"
    with open(path, "wb") as f:
        pickle.dump({"batch_label": "x", "labels": labels.tolist(), "data": images.reshape(5, -1),
                     "filenames": ["a.png"] * 5}, f, protocol=4)
    read_images, read_labels = read_batch(str(path))
    assert torch.equal(read_images, torch.from_numpy(images)) and read_labels.tolist() == labels.tolist()


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "was_executed"
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump({b"data": _Exploit(marker), b"labels": [0]}, f, protocol=2)
    with pytest.raises(UserError, match=r"unsafe CIFAR-10 file .*data_batch_1.*refused to load global"):
        read_batch(str(path))
    assert not marker.exists()


def test_truncated_file_names_the_file(tmp_path):
    images, labels = fake_images(10, 0)
    path = tmp_path / "data_batch_3"
    write_batch(str(path), images, labels, "x")
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserError, match=r"truncated or malformed CIFAR-10 file .*data_batch_3"):
        read_batch(str(path))


@pytest.mark.parametrize("batch,problem", [
    ([1, 2, 3], "expected a dict"),
    ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "shape"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "labels"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "labels"),
    ({b"labels": [0, 1]}, "data"),
])
def test_malformed_contents_are_refused(tmp_path, batch, problem):
    path = tmp_path / "test_batch"
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    with pytest.raises(UserError, match=problem):
        read_batch(str(path))


def test_missing_file_in_the_folder(tmp_path):
    write_fake_cifar10(str(tmp_path), train_per_batch=2, test=2)
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_4")
    with pytest.raises(UserError, match="data_batch_4"):
        load_cifar10(str(tmp_path))


def test_no_data_and_no_network_gives_one_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(UserError) as error:
        load_cifar10(str(tmp_path / "nowhere"))
    message = str(error.value)
    assert "download failed" in message and "cifar-10-python.tar.gz" in message and "--data_dir" in message
    assert "\n" not in message
    with pytest.raises(UserError, match="not found"):
        load_cifar10(str(tmp_path / "nowhere"), download=False)


def test_extracts_an_archive_placed_in_data_dir(tmp_path):
    source = tmp_path / "source"
    write_fake_cifar10(str(source), train_per_batch=3, test=4)
    target = tmp_path / "data"
    target.mkdir()
    with tarfile.open(target / cifar10.ARCHIVE, "w:gz") as archive:
        archive.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    data = load_cifar10(str(target), download=False)
    assert len(data.train_labels) == 15 and len(data.test_labels) == 4


def test_damaged_archive_gives_a_clear_error(tmp_path):
    (tmp_path / cifar10.ARCHIVE).write_bytes(b"not a tarball")
    with pytest.raises(UserError, match="could not extract"):
        load_cifar10(str(tmp_path), download=False)


def test_split_is_disjoint_complete_and_seeded():
    train, valid = split_train_valid(50000, 5000, seed=42)
    assert len(train) == 45000 and len(valid) == 5000
    assert len(set(train.tolist()) & set(valid.tolist())) == 0
    assert sorted(train.tolist() + valid.tolist()) == list(range(50000))
    again_train, again_valid = split_train_valid(50000, 5000, seed=42)
    assert torch.equal(train, again_train) and torch.equal(valid, again_valid)
    assert not torch.equal(valid, split_train_valid(50000, 5000, seed=43)[1])


@pytest.mark.parametrize("valid_size", [0, 100, 150])
def test_split_rejects_impossible_sizes(valid_size):
    with pytest.raises(UserError, match="--valid_size"):
        split_train_valid(100, valid_size, seed=0)

"""The CIFAR-10 reader and the split, on fake data in the real on-disk format."""
import os
import pickle

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


def test_fingerprints_tell_two_copies_apart_exactly_when_their_contents_differ(fake_data_dir):
    data = load_cifar10(fake_data_dir)

    def copy(**changed):
        tensors = {name: getattr(data, name).clone() for name in ("train_images", "train_labels", "test_images",
                                                                    "test_labels")}
        for name, (position, value) in changed.items():
            tensors[name].view(-1)[position] = value
        return cifar10.CIFAR10(**tensors)
    same, label, pixel = copy(), copy(train_labels=(3, (int(data.train_labels[3]) + 1) % 10)), copy(
        test_images=(5, int(data.test_images.view(-1)[5]) ^ 1))
    for fingerprint in (data.fingerprint(), data.test_fingerprint()):
        assert len(fingerprint) == 12 and int(fingerprint, 16) >= 0
    assert (same.fingerprint(), same.test_fingerprint()) == (data.fingerprint(), data.test_fingerprint())
    assert label.fingerprint() != data.fingerprint() and label.test_fingerprint() == data.test_fingerprint()
    assert pixel.fingerprint() != data.fingerprint() and pixel.test_fingerprint() != data.test_fingerprint()
    assert data.test_fingerprint() != data.fingerprint()


def test_reads_python3_pickles_with_str_keys(tmp_path):
    """As ../shared/data/make_cifar10.py writes them (protocol 4, str keys, extra fields)."""
    images, labels = fake_images(5, 1)
    path = tmp_path / "batch"
    with open(path, "wb") as f:
        pickle.dump({"batch_label": "x", "labels": labels.tolist(), "data": images.reshape(5, -1),
                     "filenames": ["a.png"] * 5}, f, protocol=4)
    read_images, read_labels = read_batch(str(path))
    assert torch.equal(read_images, torch.from_numpy(images)) and read_labels.tolist() == labels.tolist()


@pytest.mark.parametrize("label_type", [np.uint8, np.int32])
def test_labels_stored_as_a_small_integer_array_are_read_as_int64(tmp_path, label_type):
    """A copy that another tool wrote may keep its labels as a numpy array (the loss wants int64)."""
    images, labels = fake_images(5, 1)
    path = tmp_path / "batch"
    with open(path, "wb") as f:
        pickle.dump({"labels": labels.astype(label_type), "data": images.reshape(5, -1)}, f, protocol=4)
    read_labels = read_batch(str(path))[1]
    assert read_labels.dtype == torch.int64 and read_labels.tolist() == labels.tolist()


@pytest.mark.parametrize("core", ["numpy.core", "numpy._core"])
def test_reads_arrays_pickled_by_numpy_1_or_2(tmp_path, core):
    """numpy 1 pickles an array as ``numpy.core.multiarray._reconstruct`` (the official archive's files),
    numpy 2 as ``numpy._core.multiarray._reconstruct``: either loads under the installed numpy."""
    images, labels = fake_images(5, 2)
    pickled = pickle.dumps({b"data": images.reshape(5, -1), b"labels": labels.tolist()}, protocol=2)
    installed_core = "numpy._core" if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else "numpy.core"
    pickled = pickled.replace(f"c{installed_core}.multiarray\n".encode(), f"c{core}.multiarray\n".encode())
    assert f"c{core}.multiarray\n_reconstruct\n".encode() in pickled
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickled)
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


@pytest.mark.parametrize("protocol", [2, 4])  # builtins are __builtin__ at protocol 2, as in the official files
@pytest.mark.parametrize("call", [(eval, ("1",)), (exec, ("1",)), (getattr, (0, "real")), (__import__, ("os",))])
def test_refuses_every_global_but_numpy_arrays(tmp_path, call, protocol):
    class Call:
        def __reduce__(self):
            return call
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump({b"data": Call(), b"labels": [0]}, f, protocol=protocol)
    with pytest.raises(UserError, match=rf"refused to load global (__builtin__|builtins)\.{call[0].__name__}:"):
        read_batch(str(path))


def test_truncated_file_names_the_file(tmp_path):
    images, labels = fake_images(10, 0)
    path = tmp_path / "data_batch_3"
    write_batch(str(path), images, labels, "x")
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserError, match=r"truncated or malformed CIFAR-10 file .*data_batch_3"):
        read_batch(str(path))


@pytest.mark.parametrize("batch,problem", [
    ([1, 2, 3], "expected a dict"),
    ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "'data' must be a uint8 array of shape"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "'data' must be a uint8 array of shape"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, r"'labels' must hold 2 integers in 0\.\.9"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"'labels' must hold 2 integers in 0\.\.9"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [-1, 0]}, r"'labels' must hold 2 integers in 0\.\.9"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [b"cat", 0]}, "'labels' must be a list of integers"),
    ({b"data": np.zeros((2, 3072), np.uint8)}, "'labels' must be a list of integers"),
    ({b"labels": [0, 1]}, "'data' must be a uint8 array of shape"),
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


def test_a_batch_file_that_cannot_be_read_gets_one_line_naming_it_and_the_fix(tmp_path, monkeypatch):
    write_fake_cifar10(str(tmp_path), train_per_batch=2, test=2)
    folder = tmp_path / "cifar-10-batches-py"
    os.remove(folder / "data_batch_4")
    os.mkdir(folder / "data_batch_4")
    with pytest.raises(UserError) as error:
        load_cifar10(str(tmp_path))
    assert str(error.value).startswith(f"cannot read CIFAR-10 file {folder / 'data_batch_4'} (Is a directory); "
                                       f"delete {folder} and run again")

    def unreadable(path, *args, **kwargs):  # a test run as root reads any file, whatever its mode
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr(cifar10, "open", unreadable, raising=False)
    with pytest.raises(UserError) as error:
        read_batch(str(folder / "test_batch"))
    assert str(error.value) == (f"cannot read CIFAR-10 file {folder / 'test_batch'} (permission denied); ask its "
                                "owner for read access, or point --data_dir at a copy you can read")



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

"""The fake CIFAR-10 writer: what the runs read, never written over a copy that is there, nothing left half-written."""
import io
import os
import pickle
import pickletools

import pytest

from training import fake_data
from training.cifar10 import FOLDER, load_cifar10


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _files(root):
    return {os.path.relpath(os.path.join(folder, name), root): _read(os.path.join(folder, name))
            for folder, _, names in os.walk(root) for name in names}


def test_the_command_writes_a_copy_that_loads_with_the_counts_asked_for(tmp_path, capsys):
    assert fake_data.main([str(tmp_path), "--train_per_batch", "3", "--test", "7", "--seed", "5"]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / FOLDER}\n"
    assert os.listdir(tmp_path) == [FOLDER]  # no staging folder left beside it
    data = load_cifar10(str(tmp_path), download=False)
    assert len(data.train_labels) == 15 and len(data.test_labels) == 7
    images, _ = fake_data.fake_images(3, 5)  # data_batch_1 is drawn from the seed
    assert (data.train_images[:3].numpy() == images).all()


def test_the_command_writes_5_x_100_training_and_100_test_images_by_default_as_the_readme_says(tmp_path):
    assert fake_data.main([str(tmp_path)]) == 0
    data = load_cifar10(str(tmp_path), download=False)
    assert (len(data.train_labels), len(data.test_labels)) == (500, 100)


@pytest.mark.parametrize("name", ["data_batch_1", "test_batch", "batches.meta"])
def test_each_file_is_a_python_2_pickle_as_the_official_archive_holds(name, tmp_path):
    fake_data.write_fake_cifar10(str(tmp_path), train_per_batch=2, test=3)
    pickled = _read(tmp_path / FOLDER / name)
    opcodes = {opcode.name for opcode, _, _ in pickletools.genops(pickled)}
    assert pickled.startswith(b"\x80\x02") and "SHORT_BINSTRING" in opcodes  # protocol 2, Python 2 str
    assert not opcodes & {"BINUNICODE", "SHORT_BINBYTES", "BINBYTES"} and b"_codecs" not in pickled
    ops = [opcode.name for opcode, _, _ in pickletools.genops(pickled)]
    after_strings = {following for op, following in zip(ops, ops[1:]) if op in ("SHORT_BINSTRING", "BINSTRING")}
    assert after_strings <= {"BINPUT", "LONG_BINPUT"}  # memoized, as cPickle's save_string did
    loaded = pickle.loads(pickled, encoding="bytes")
    assert all(isinstance(key, bytes) for key in loaded)
    if name == "batches.meta":  # as the official file's, but for the classes' names
        assert {key: loaded[key] for key in (b"num_cases_per_batch", b"num_vis")} == {b"num_cases_per_batch": 2,
                                                                                    b"num_vis": 3072}
        assert loaded[b"label_names"] == [f"class{k}".encode() for k in range(10)]
    else:
        assert loaded[b"batch_label"] == (b"training batch 1 of 5" if name == "data_batch_1"
                                          else b"testing batch 1 of 1")
        assert "BINSTRING" in opcodes  # the array's raw data: a Python 2 str of 256 bytes or more
        assert loaded[b"data"].shape == (2 if name == "data_batch_1" else 3, 3072)
        assert loaded[b"filenames"][0] == b"fake_0.png"
        with pytest.raises(UnicodeDecodeError):  # as pickle.load fails on an official file without encoding="bytes"
            pickle.loads(pickled)


def test_a_folder_that_has_a_copy_is_refused_and_left_as_it_is(tmp_path, capsys):
    fake_data.write_fake_cifar10(str(tmp_path), train_per_batch=2, test=2, seed=1)
    before = _files(tmp_path)
    assert fake_data.main([str(tmp_path), "--train_per_batch", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / FOLDER} already exists") and err.count("\n") == 1
    assert "remove that folder" in err
    assert _files(tmp_path) == before


def test_one_image_per_file_is_enough(tmp_path):
    fake_data.write_fake_cifar10(str(tmp_path), train_per_batch=1, test=1)
    data = load_cifar10(str(tmp_path))
    assert (len(data.train_labels), len(data.test_labels)) == (5, 1)


@pytest.mark.parametrize("size, opcode", [(255, "SHORT_BINSTRING"), (256, "BINSTRING")])
def test_a_string_takes_the_short_opcode_up_to_255_bytes_as_in_python_2(size, opcode):
    text = b"x" * size
    buffer = io.BytesIO()
    fake_data.Python2Pickler(buffer, protocol=2).dump(text)
    assert [op.name for op, _, _ in pickletools.genops(buffer.getvalue())][1] == opcode
    assert pickle.loads(buffer.getvalue(), encoding="bytes") == text


@pytest.mark.parametrize("flags, asked", [(["--train_per_batch", "0"], "0 per training batch"),
                                          (["--test", "-2"], "-2 test images"), (["--test", "0"], "0 test images")])
def test_a_count_below_one_is_refused_before_anything_is_written(flags, asked, tmp_path, capsys):
    root = tmp_path / "new"
    assert fake_data.main([str(root), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: a fake CIFAR-10 needs at least one image") and asked in err
    assert "--train_per_batch and --test of 1 or more" in err and err.count("\n") == 1
    assert not root.exists()


@pytest.mark.parametrize("stop, said", [(OSError(28, "No space left on device"), "No space left on device"),
                                        (OSError("the disk went away"), "the disk went away"),  # no errno
                                        (KeyboardInterrupt(), None)])
@pytest.mark.parametrize("new_folders", [[], ["new"], ["new", "deeper"]])
def test_a_write_cut_short_leaves_no_copy_behind_nor_a_folder_it_made(stop, said, new_folders, tmp_path, capsys,
                                                                      monkeypatch):
    (tmp_path / "kept").mkdir()  # a folder beside the copy, which stays
    root = tmp_path.joinpath(*new_folders)
    written = []

    def write_batch(path, images, labels, name):
        if len(written) == 3:
            raise stop
        written.append(path)
        open(path, "wb").close()
    monkeypatch.setattr(fake_data, "write_batch", write_batch)
    code = fake_data.main([str(root), "--train_per_batch", "2"])
    err = capsys.readouterr().err
    if isinstance(stop, OSError):
        assert (code, err) == (2, f"error: cannot write a fake CIFAR-10 into {root} ({said}); choose a writable "
                                  "folder\n")
    else:
        assert (code, err) == (130, "\ninterrupted\n")
    assert len(written) == 3 and os.listdir(tmp_path) == ["kept"]
    (staging,) = {os.path.dirname(os.path.dirname(path)) for path in written}  # renamed into place within one disk
    assert os.path.dirname(staging) == str(root) and os.path.basename(staging).startswith(".fake-cifar-10-")


def test_a_folder_made_for_a_failed_write_is_kept_when_something_else_was_put_in_it(tmp_path, monkeypatch):
    root = tmp_path / "new"

    def write_batch(path, images, labels, name):
        (root / "notes.txt").write_text("another program's file")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(fake_data, "write_batch", write_batch)
    with pytest.raises(OSError, match="No space left"):  # the write's own error, not the clean-up's
        fake_data.write_fake_cifar10(str(root))
    assert os.listdir(root) == ["notes.txt"]

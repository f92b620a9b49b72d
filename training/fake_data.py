"""Small CIFAR-10 stand-ins written in the real on-disk format, for tests, CI and quick notebook runs.

    python -m training.fake_data DIR [--train_per_batch N] [--test N]    # -> DIR/cifar-10-batches-py/

The files are written as the official archive has them: Python 2 pickles (protocol 2, every string a
Python 2 ``str``, which Python 3 reads back as bytes only with ``encoding="bytes"``) holding a uint8
``data`` array ``[N, 3072]`` (red plane, green plane, blue plane) and a ``labels`` list. Each class has its
own mean colour and stripe pattern plus noise, so a model can learn something from a few hundred images.
"""
import argparse
import contextlib
import os
import pickle
import shutil
import struct
import sys
import tempfile

import numpy as np

from .cifar10 import FOLDER, NUM_CLASSES, TEST_FILE, TRAIN_FILES
from .errors import CommandLineParser, UserError, path_flag


def fake_images(count, seed):
    """``count`` learnable fake images: uint8 ``[count, 3, 32, 32]`` and their labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, size=count)
    colours = np.random.default_rng(1234).uniform(40, 215, size=(NUM_CLASSES, 3))
    rows = np.arange(32)[:, None]
    stripes = np.stack([np.sin(rows * (k + 1) * np.pi / 16) * np.ones((1, 32)) for k in range(NUM_CLASSES)])
    images = colours[labels][:, :, None, None] + 30 * stripes[labels][:, None] + rng.normal(0, 25, (count, 3, 32, 32))
    return np.clip(images, 0, 255).astype(np.uint8), labels


class Python2Pickler(pickle._Pickler):
    """Pickles strings and bytes, the array's raw data included, as Python 2's cPickle pickled its ``str``: the
    ``SHORT_BINSTRING`` and ``BINSTRING`` opcodes of the official files. Python 3's own pickler writes bytes at
    protocol 2 as a call to ``_codecs.encode`` instead, which a reader that mishandles the real files still
    reads. The pure-Python pickler is the one whose opcodes can be chosen per type."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_python2_str(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("ascii")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = dispatch[str] = save_python2_str


def write_batch(path, images, labels, name):
    """One batch file as the official archive stores it."""
    batch = {"batch_label": name, "labels": [int(x) for x in labels], "data": images.reshape(len(images), -1),
             "filenames": [f"fake_{i}.png" for i in range(len(images))]}
    with open(path, "wb") as f:
        Python2Pickler(f, protocol=2).dump(batch)


def write_fake_cifar10(root, train_per_batch=100, test=100, seed=0):
    """Write ``root/cifar-10-batches-py`` with 5 x ``train_per_batch`` training and ``test`` test images.

    A ``root`` that already has that folder is refused, as it may hold the real data set; the files are written
    in a staging folder inside ``root`` that is renamed into place only when complete, so a failed or interrupted
    write leaves no partial copy that a run would later read, nor the folders made for it."""
    if train_per_batch < 1 or test < 1:
        raise UserError(f"a fake CIFAR-10 needs at least one image in each file (asked for {train_per_batch} per "
                        f"training batch and {test} test images); give --train_per_batch and --test of 1 or more")
    folder = os.path.join(root, FOLDER)
    if os.path.lexists(folder):
        raise UserError(f"{folder} already exists (it may be the real data set) and is left as it is; give a DIR "
                        f"without {FOLDER}/ in it, or remove that folder first")
    made = _missing_folders(root)
    try:
        os.makedirs(root, exist_ok=True)
        _write_staged(root, folder, train_per_batch, test, seed)
    except BaseException:
        for path in made:  # the folders made for this copy, deepest first; rmdir leaves one that holds anything
            with contextlib.suppress(OSError):
                os.rmdir(path)
        raise
    return folder


def _missing_folders(root):
    """The folders of ``root``'s path that do not exist yet, deepest first: those that ``makedirs`` will make."""
    missing, path = [], os.path.abspath(root)
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _write_staged(root, folder, train_per_batch, test, seed):
    """The copy written in a staging folder inside ``root``, then renamed to ``folder``."""
    staging = tempfile.mkdtemp(prefix=".fake-cifar-10-", dir=root)
    try:
        written = os.path.join(staging, FOLDER)
        os.mkdir(written)  # not the staging folder itself, which mkdtemp makes private to its owner
        for index, name in enumerate(TRAIN_FILES):
            images, labels = fake_images(train_per_batch, seed + index)
            write_batch(os.path.join(written, name), images, labels, f"training batch {index + 1} of 5")
        images, labels = fake_images(test, seed + 99)
        write_batch(os.path.join(written, TEST_FILE), images, labels, "testing batch 1 of 1")
        with open(os.path.join(written, "batches.meta"), "wb") as f:
            Python2Pickler(f, protocol=2).dump({"label_names": [f"class{k}" for k in range(NUM_CLASSES)],
                                                "num_cases_per_batch": train_per_batch, "num_vis": 3072})
        os.rename(written, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv=None):
    cli = parse_args(argv)
    try:
        print("wrote", write_fake_cifar10(cli.root, cli.train_per_batch, cli.test, cli.seed))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write a fake CIFAR-10 into {cli.root} ({exc.strerror or exc}); choose a writable folder",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


def parse_args(argv=None):
    parser = CommandLineParser(prog="python -m training.fake_data",
                               description="Write a small fake CIFAR-10 in the real on-disk format.",
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("root", type=path_flag, help="the folder that gets cifar-10-batches-py/ (use it as --data_dir)")
    parser.add_argument("--train_per_batch", type=int, default=100,
                        help="images in each of the 5 training batch files")
    parser.add_argument("--test", type=int, default=100, help="images in the test batch file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the images' labels and noise")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())

"""Reading CIFAR-10 from the ``cifar-10-batches-py`` layout, fetching it, and splitting it.

The pickles are read through an unpickler that only admits the few numpy names a CIFAR-10 batch
holds, so a tampered file is refused instead of executed. md5 sums are not checked: a user's own
copy (or the course's JPEG copy) loads as long as its contents have the right shape.
"""
import contextlib
import hashlib
import importlib
import os
import pickle
import shutil
import tarfile
import tempfile
from dataclasses import dataclass

import numpy as np
import torch

from .errors import UserError

FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
NUM_CLASSES = 10
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")  # label order
IMAGE_SHAPE = (3, 32, 32)


def _numpy_reconstructors():
    """The functions a pickled array names, under either numpy's module names (``numpy.core`` before 2.0,
    ``numpy._core`` after), taken from the installed numpy's real core: numpy 1.26 also has a
    ``numpy._core`` package, but only as stubs, without ``numeric``."""
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    core = "numpy._core" if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else "numpy.core"
    multiarray = importlib.import_module(f"{core}.multiarray")
    numeric = importlib.import_module(f"{core}.numeric")
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = numeric._frombuffer
    import _codecs
    allowed[("_codecs", "encode")] = _codecs.encode  # how Python 3 pickles bytes at protocol 2
    return allowed


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global that no CIFAR-10 batch needs: refused, never imported or called."""


class _BatchUnpickler(pickle.Unpickler):
    """Admits only the globals a CIFAR-10 batch needs to rebuild its numpy array."""
    allowed = _numpy_reconstructors()

    def find_class(self, module, name):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"refused to load global {module}.{name}: "
                                "a CIFAR-10 batch holds only numpy arrays, lists and strings") from None


def read_batch(path):
    """Read one batch file; return ``(images uint8 [N, 3, 32, 32], labels int64 [N])``."""
    folder = os.path.dirname(path)
    fix = (f"delete {folder} and run again, which extracts {os.path.join(os.path.dirname(folder), ARCHIVE)} "
           "if it is there, else downloads CIFAR-10")
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise UserError(f"CIFAR-10 file missing: {path}; {fix}") from None
    except PermissionError:  # a copy on a shared disk that its owner did not open to others
        raise UserError(f"cannot read CIFAR-10 file {path} (permission denied); ask its owner for read access, "
                        "or point --data_dir at a copy you can read") from None
    except OSError as exc:  # a folder in the file's place, a failing disk
        raise UserError(f"cannot read CIFAR-10 file {path} ({exc.strerror}); {fix}") from None
    except RefusedGlobal as exc:
        raise UserError(f"unsafe CIFAR-10 file {path} ({exc}); {fix}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            OverflowError) as exc:
        raise UserError(f"truncated or malformed CIFAR-10 file {path} ({type(exc).__name__}: {exc}); {fix}") from None
    if not isinstance(batch, dict):
        raise UserError(f"malformed CIFAR-10 file {path}: expected a dict, found {type(batch).__name__}; {fix}")
    batch = {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"malformed CIFAR-10 file {path}: 'data' must be a uint8 array of shape [N, 3072]; {fix}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise UserError(f"malformed CIFAR-10 file {path}: 'labels' must be a list of integers; {fix}") from None
    if labels.shape != (len(data),) or (len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES)):
        raise UserError(f"malformed CIFAR-10 file {path}: 'labels' must hold {len(data)} integers in "
                        f"0..{NUM_CLASSES - 1}; {fix}")
    return torch.from_numpy(data.reshape(-1, *IMAGE_SHAPE).copy()), torch.from_numpy(labels)


@dataclass
class CIFAR10:
    """The whole data set as uint8 images ``[N, 3, 32, 32]`` and int64 labels ``[N]``, on the CPU."""
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    def test_fingerprint(self):
        """A short SHA-1 of the test images: tells which copy of CIFAR-10 produced a result."""
        return hashlib.sha1(self.test_images.numpy().tobytes()).hexdigest()[:12]

    def fingerprint(self):
        """A short SHA-1 of every image and label: the same for two copies exactly when they hold the same data."""
        digest = hashlib.sha1()
        for tensor in (self.train_images, self.train_labels, self.test_images, self.test_labels):
            digest.update(tensor.numpy().tobytes())
        return digest.hexdigest()[:12]


def load_cifar10(data_dir, download=True):
    """Load CIFAR-10 from ``data_dir/cifar-10-batches-py``, extracting or downloading it first if absent."""
    folder = os.path.join(data_dir, FOLDER)
    if not os.path.isdir(folder):
        fetch_cifar10(data_dir, download)
    train = [read_batch(os.path.join(folder, name)) for name in TRAIN_FILES]
    test_images, test_labels = read_batch(os.path.join(folder, TEST_FILE))
    return CIFAR10(torch.cat([images for images, _ in train]), torch.cat([labels for _, labels in train]),
                   test_images, test_labels)


def fetch_cifar10(data_dir, download=True):
    """Put ``data_dir/cifar-10-batches-py`` in place: extract ``data_dir/cifar-10-python.tar.gz`` if it is
    there, else download it with torchvision (md5-checked) and extract it.

    The work happens in a staging folder inside ``data_dir`` that is renamed into place only when complete:
    a failed or interrupted fetch leaves ``data_dir`` as it was, and processes fetching at once do not
    mix their files. A downloaded archive is kept beside the folder, as torchvision keeps it.
    """
    from torchvision.datasets.utils import download_url

    archive = os.path.join(data_dir, ARCHIVE)
    where = (f"put {ARCHIVE} (from {URL}) in {os.path.abspath(data_dir)}, or point --data_dir at a folder "
             f"that holds {FOLDER}/")
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        if os.path.basename(data_dir) == ARCHIVE:
            raise UserError(f"--data_dir {data_dir} is the archive itself; pass the folder that holds it: --data_dir "
                            f"{os.path.dirname(os.path.abspath(data_dir))}")
        raise UserError(f"--data_dir {data_dir} is a file, not a folder; point --data_dir at a folder that holds "
                        f"{FOLDER}/ or {ARCHIVE} (from {URL})")
    if all(os.path.isfile(os.path.join(data_dir, name)) for name in (*TRAIN_FILES, TEST_FILE)):
        folder, parent = os.path.abspath(data_dir), os.path.dirname(os.path.abspath(data_dir))
        if os.path.basename(folder) == FOLDER:
            raise UserError(f"--data_dir {data_dir} is the {FOLDER} folder itself; pass the folder that holds it: "
                            f"--data_dir {parent}")
        raise UserError(f"--data_dir {data_dir} holds the CIFAR-10 batch files themselves; they belong in a folder "
                        f"named {FOLDER} inside --data_dir: rename {folder} to {os.path.join(parent, FOLDER)} "
                        f"and pass --data_dir {parent}")
    have_archive = os.path.isfile(archive)
    if not have_archive and not download:
        raise UserError(f"CIFAR-10 not found at {os.path.join(os.path.abspath(data_dir), FOLDER)}; {where}")
    created, staging = _missing_ancestors(data_dir), None
    try:
        try:
            os.makedirs(data_dir, exist_ok=True)
            staging = tempfile.mkdtemp(prefix=".cifar-10-fetch-", dir=data_dir)
        except OSError as exc:
            raise UserError(f"cannot write into --data_dir {data_dir} ({exc.strerror}); choose a writable folder, "
                            f"or {where}") from None
        source = archive
        if not have_archive:
            source = os.path.join(staging, ARCHIVE)
            try:
                download_url(URL, staging, filename=ARCHIVE, md5=ARCHIVE_MD5)
            except Exception as exc:  # urllib, ssl, socket and integrity errors all mean the same to the user
                raise UserError(f"CIFAR-10 not found at {os.path.join(os.path.abspath(data_dir), FOLDER)} and the "
                                f"download failed ({type(exc).__name__}: {exc}); {where}") from None
        try:
            extract_archive(source, staging)
        except UserError:
            raise
        except Exception as exc:  # tarfile and gzip raise many types for a damaged archive
            if isinstance(exc, OSError) and exc.errno is not None:  # a full disk or a quota, not the archive's fault
                raise UserError(f"cannot extract {archive} into {data_dir} ({exc.strerror}); CIFAR-10 takes about "
                                "185 MB there: make room on that disk, or move the archive to a folder on a disk with "
                                "room and pass that folder as --data_dir") from None
            raise UserError(f"could not extract {archive} ({type(exc).__name__}: {exc}); download it again, "
                            f"or {where}") from None
        if not os.path.isdir(os.path.join(staging, FOLDER)):
            raise UserError(f"{archive} did not contain {FOLDER}/; {where}")
        if not have_archive:
            os.replace(source, archive)
        try:
            os.rename(os.path.join(staging, FOLDER), os.path.join(data_dir, FOLDER))
        except OSError:
            if not os.path.isdir(os.path.join(data_dir, FOLDER)):
                raise
            # another process put its identical copy in place first
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # deepest first; each is removed only if the fetch left it empty
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def extract_archive(archive, destination):
    """Extract the tar ``archive`` into ``destination``, refusing it whole if any member is not a plain
    file or folder that stays inside ``destination``: an archive placed in ``--data_dir`` is not
    checksummed, and a tampered one could otherwise write anywhere the user can (``../`` names, absolute
    paths, links)."""
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for member in members:
            path = os.path.normpath(member.name)
            if not (member.isfile() or member.isdir()) or os.path.isabs(path) or path.split(os.sep)[0] == os.pardir:
                raise UserError(f"unsafe archive {archive}: its member {member.name!r} is not a plain file or "
                                "folder inside it; delete the archive and download CIFAR-10 again")
        # the "data" filter (Python 3.12, and security releases before it) also drops odd permission bits
        tar.extractall(destination, members=members,
                       **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))


def _missing_ancestors(path):
    """``path`` and those of its parent folders that do not exist yet, deepest first."""
    missing = []
    path = os.path.abspath(path)
    while not os.path.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def check_valid_size(num_images, valid_size):
    """Refuse a validation share that would leave no training or no validation image."""
    if not 0 < valid_size < num_images:
        raise UserError(f"--valid_size {valid_size} must be between 1 and {num_images - 1} "
                        f"(the training set has {num_images} images)")


def split_train_valid(num_images, valid_size, seed):
    """One permutation of the training images from ``seed``, cut into disjoint (train, valid) index tensors."""
    check_valid_size(num_images, valid_size)
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))
    return order[:num_images - valid_size], order[num_images - valid_size:]

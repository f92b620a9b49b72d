"""Fetching CIFAR-10: the download, the archive's extraction and the --data_dir it goes into."""
import errno
import io
import os
import shutil
import tarfile
import urllib.error

import pytest

from training import cifar10
from training.cifar10 import load_cifar10
from training.errors import UserError
from training.fake_data import write_fake_cifar10


def _write_archive(path, source_root):
    with tarfile.open(path, "w:gz") as archive:
        archive.add(os.path.join(source_root, cifar10.FOLDER), arcname=cifar10.FOLDER)


@pytest.fixture
def fake_archive(tmp_path):
    """A small CIFAR-10 archive in the official layout (5 x 3 training images, 4 test images)."""
    source = tmp_path / "source"
    write_fake_cifar10(str(source), train_per_batch=3, test=4)
    path = tmp_path / "source.tar.gz"
    _write_archive(path, str(source))
    return path


def _replace_download(monkeypatch, fake_download):
    import torchvision.datasets.utils as tv_utils
    monkeypatch.setattr(tv_utils, "download_url", fake_download)


def test_the_fix_a_damaged_batch_file_names_restores_the_copy(tmp_path, fake_archive):
    shutil.copy(fake_archive, tmp_path / cifar10.ARCHIVE)
    load_cifar10(str(tmp_path), download=False)
    (tmp_path / cifar10.FOLDER / "data_batch_2").write_bytes(b"\x80\x02}q")  # a write cut short
    with pytest.raises(UserError) as error:
        load_cifar10(str(tmp_path), download=False)
    advice = f"delete {tmp_path / cifar10.FOLDER} and run again, which extracts {tmp_path / cifar10.ARCHIVE} if"
    assert advice in str(error.value)
    shutil.rmtree(tmp_path / cifar10.FOLDER)
    assert len(load_cifar10(str(tmp_path), download=False).train_labels) == 15


def test_downloads_into_place_and_keeps_the_archive(tmp_path, monkeypatch, fake_archive):
    data_dir = tmp_path / "new" / "data"

    def download(url, root, filename, md5):
        assert url == cifar10.URL and md5 == cifar10.ARCHIVE_MD5
        # staged beside the copy, on its filesystem, so that it is renamed into place whole; named as temporary
        assert os.path.dirname(root) == str(data_dir) and os.path.basename(root).startswith(".cifar-10-fetch-")
        shutil.copy(fake_archive, os.path.join(root, filename))
    _replace_download(monkeypatch, download)
    data = load_cifar10(str(data_dir))
    assert len(data.train_labels) == 15 and len(data.test_labels) == 4
    assert sorted(os.listdir(data_dir)) == sorted([cifar10.ARCHIVE, cifar10.FOLDER])


@pytest.mark.parametrize("failure", [urllib.error.URLError("[Errno -3] Temporary failure in name resolution"),
                                     KeyboardInterrupt()])
def test_a_failed_or_interrupted_download_leaves_nothing_behind(tmp_path, monkeypatch, failure):
    def download(url, root, filename, md5):
        with open(os.path.join(root, filename), "wb") as f:
            f.write(b"\x1f\x8b half an archive")
        raise failure
    _replace_download(monkeypatch, download)
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("kept")
    monkeypatch.chdir(tmp_path)
    for data_dir in (tmp_path / "new" / "data", existing, "relative/data"):  # a relative one, as ./data is
        with pytest.raises(UserError if isinstance(failure, Exception) else KeyboardInterrupt) as error:
            load_cifar10(str(data_dir))
        if error.type is UserError:
            message = str(error.value)
            assert "download failed" in message and "cifar-10-python.tar.gz" in message and "--data_dir" in message
            assert "\n" not in message
    assert os.listdir(tmp_path) == ["existing"] and os.listdir(existing) == ["notes.txt"]


def test_no_data_without_download_names_the_fix(tmp_path, monkeypatch):
    _replace_download(monkeypatch, lambda *args, **kwargs: pytest.fail("downloaded with download=False"))
    with pytest.raises(UserError, match="not found.*put cifar-10-python.tar.gz"):
        load_cifar10(str(tmp_path / "nowhere"), download=False)
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("tar_filters", [True, False], ids=["tarfile with filters", "tarfile before filters"])
@pytest.mark.filterwarnings("ignore:Python 3.14 will:DeprecationWarning")  # 3.12+ warns when no filter is given
def test_extracts_an_archive_placed_in_data_dir(tmp_path, monkeypatch, fake_archive, tar_filters):
    if not tar_filters:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    target = tmp_path / "data"
    target.mkdir()
    with tarfile.open(fake_archive) as archive, tarfile.open(target / cifar10.ARCHIVE, "w:gz") as copy:
        for member in archive.getmembers():  # as the archive is, but one file with odd permission bits
            if member.name.endswith("test_batch"):
                member.mode = 0o4777  # setuid, writable by all
            copy.addfile(member, archive.extractfile(member) if member.isfile() else None)
    data = load_cifar10(str(target), download=False)
    assert len(data.train_labels) == 15 and len(data.test_labels) == 4
    assert sorted(os.listdir(target)) == sorted([cifar10.ARCHIVE, cifar10.FOLDER])
    if tar_filters and hasattr(tarfile, "data_filter"):  # the "data" filter drops those bits
        assert (target / cifar10.FOLDER / "test_batch").stat().st_mode & 0o7022 == 0


def test_an_interrupted_extraction_leaves_no_partial_folder(tmp_path, monkeypatch, fake_archive):
    def extract_some(from_path, to_path):
        os.makedirs(os.path.join(to_path, cifar10.FOLDER))
        open(os.path.join(to_path, cifar10.FOLDER, "data_batch_1"), "wb").close()
        raise KeyboardInterrupt
    monkeypatch.setattr(cifar10, "extract_archive", extract_some)
    shutil.copy(fake_archive, tmp_path / cifar10.ARCHIVE)
    with pytest.raises(KeyboardInterrupt):
        load_cifar10(str(tmp_path), download=False)
    assert sorted(os.listdir(tmp_path)) == sorted([cifar10.ARCHIVE, "source", "source.tar.gz"])


def test_a_copy_another_process_put_in_place_first_is_used(tmp_path, monkeypatch, fake_archive):
    def download(url, root, filename, md5):  # meanwhile another process completes its own fetch
        write_fake_cifar10(str(tmp_path / "data"), train_per_batch=3, test=4)
        shutil.copy(fake_archive, os.path.join(root, filename))
    _replace_download(monkeypatch, download)
    data = load_cifar10(str(tmp_path / "data"))
    assert len(data.test_labels) == 4
    assert sorted(os.listdir(tmp_path / "data")) == sorted([cifar10.ARCHIVE, cifar10.FOLDER])


@pytest.mark.parametrize("name, kind", [("../../escaped.txt", tarfile.REGTYPE), ("{home}/escaped.txt", tarfile.REGTYPE),
                                        (f"{cifar10.FOLDER}/link", tarfile.SYMTYPE),
                                        (f"{cifar10.FOLDER}/device", tarfile.CHRTYPE)])
def test_an_archive_that_would_write_outside_its_folder_is_refused_whole(tmp_path, fake_archive, name, kind):
    home = tmp_path / "home"
    data_dir = home / "data"
    data_dir.mkdir(parents=True)
    name = name.format(home=home)
    payload = b"written outside --data_dir"
    with tarfile.open(fake_archive) as source, tarfile.open(data_dir / cifar10.ARCHIVE, "w:gz") as tampered:
        for member in source.getmembers():
            tampered.addfile(member, source.extractfile(member) if member.isfile() else None)
        extra = tarfile.TarInfo(name)
        extra.type = kind
        extra.linkname = "../../../escaped.txt" if kind == tarfile.SYMTYPE else ""
        extra.size = len(payload) if kind == tarfile.REGTYPE else 0
        tampered.addfile(extra, io.BytesIO(payload) if kind == tarfile.REGTYPE else None)
    with pytest.raises(UserError) as error:
        load_cifar10(str(data_dir), download=False)
    message = str(error.value)
    assert message.startswith(f"unsafe archive {data_dir / cifar10.ARCHIVE}: its member {name!r} is not a plain "
                              "file or folder inside it; delete the archive") and "\n" not in message
    assert os.listdir(data_dir) == [cifar10.ARCHIVE] and os.listdir(home) == ["data"]


def test_damaged_archive_gives_a_clear_error_and_stays(tmp_path):
    (tmp_path / cifar10.ARCHIVE).write_bytes(b"not a tarball")
    with pytest.raises(UserError, match="could not extract"):
        load_cifar10(str(tmp_path), download=False)
    assert os.listdir(tmp_path) == [cifar10.ARCHIVE]


def test_a_disk_that_fills_up_while_the_archive_is_extracted_is_named_and_the_archive_stays(tmp_path, fake_archive,
                                                                                         monkeypatch):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copy(fake_archive, data_dir / cifar10.ARCHIVE)
    real_copy = tarfile.copyfileobj

    def copy_until_full(source, destination, length=None, *args, **kwargs):
        real_copy(source, destination, length // 2, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(tarfile, "copyfileobj", copy_until_full)
    with pytest.raises(UserError) as error:
        load_cifar10(str(data_dir), download=False)
    assert str(error.value) == (
        f"cannot extract {data_dir / cifar10.ARCHIVE} into {data_dir} (No space left on device); CIFAR-10 takes "
        "about 185 MB there: make room on that disk, or move the archive to a folder on a disk with room and pass that "
        "folder as --data_dir")
    assert os.listdir(data_dir) == [cifar10.ARCHIVE]


def test_data_dir_that_is_a_file_or_unwritable_is_refused(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError) as refused:
        load_cifar10(str(tmp_path / "a_file"))
    assert str(refused.value) == (f"--data_dir {tmp_path / 'a_file'} is a file, not a folder; point --data_dir at a "
                                  f"folder that holds cifar-10-batches-py/ or cifar-10-python.tar.gz (from "
                                  f"{cifar10.URL})")
    archive = tmp_path / cifar10.ARCHIVE  # the download itself, given where its folder belongs
    archive.write_bytes(b"")
    with pytest.raises(UserError) as refused:
        load_cifar10(str(archive))
    assert str(refused.value) == (f"--data_dir {archive} is the archive itself; pass the folder that holds it: "
                                  f"--data_dir {tmp_path}")
    with pytest.raises(UserError, match="cannot write into --data_dir"):
        load_cifar10(str(tmp_path / "a_file" / "data"))


def test_data_dir_pointing_at_the_batches_themselves_gets_the_folder_to_pass(tmp_path, fake_data_dir):
    """Nothing is downloaded into, or staged inside, a folder of batch files given as --data_dir."""
    batches = os.path.join(fake_data_dir, cifar10.FOLDER)
    with pytest.raises(UserError, match=f"is the cifar-10-batches-py folder itself; pass the folder that holds it: "
                                        f"--data_dir {fake_data_dir}$"):
        load_cifar10(batches)
    renamed = shutil.copytree(batches, tmp_path / "my_cifar")
    before = sorted(os.listdir(renamed))
    with pytest.raises(UserError, match=f"rename {renamed} to {tmp_path / cifar10.FOLDER} and pass --data_dir "
                                        f"{tmp_path}$"):
        load_cifar10(str(renamed))
    assert sorted(os.listdir(renamed)) == before

@pytest.fixture
def archive_server(fake_archive):
    """The fake archive served over HTTP on 127.0.0.1, as torchvision's downloader will fetch it."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(fake_archive.parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{fake_archive.name}"
    server.shutdown()
    server.server_close()


def test_a_real_download_is_checked_and_put_in_place(tmp_path, monkeypatch, fake_archive, archive_server):
    import hashlib

    monkeypatch.setattr(cifar10, "URL", archive_server)
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", "0" * 32)
    with pytest.raises(UserError, match=r"download failed \(RuntimeError: File not found or corrupted.\)"):
        load_cifar10(str(tmp_path / "data"))
    assert not (tmp_path / "data").exists()
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", hashlib.md5(fake_archive.read_bytes()).hexdigest())
    data = load_cifar10(str(tmp_path / "data"))
    assert len(data.train_labels) == 15 and len(data.test_labels) == 4
    assert sorted(os.listdir(tmp_path / "data")) == sorted([cifar10.ARCHIVE, cifar10.FOLDER])

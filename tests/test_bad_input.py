"""Every bad input to main.py gets one clear line on stderr, exit status 2, and nothing written or lost: model
configs, a missing data copy, an unwritable --logdir or one that another run writes, checkpoints that cannot be
resumed. Bad flags are in test_bad_flags.py."""
import json
import os
import pathlib
import re
import subprocess
import sys
import threading

import pytest
import torch

import main
from helpers import read_results
from training.cifar10 import load_cifar10
from training.errors import UserError
from training.models import load_model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


BAD_CONFIGS = [
    ("missing.json", None, "mlp", "model config not found"),
    ("broken.json", '{"num_classes": 10,', "resnet18", "invalid JSON at line 1"),
    ("empty.json", "", "mlp", "the model config is empty; pass --model_config .*mlp.json"),
    ("blank.json", " \n", "resnet18", "the model config is empty; pass --model_config .*resnet18.json"),
    ("list.json", "[1, 2]", "resnet18", "expected a JSON object"),
    ("number.json", "42", "mlp", "expected a JSON object of mlp settings, got int"),
    ("unknown.json", '{"num_classes": 10, "depth": 3}', "resnet18", "unknown key 'depth'.*valid keys: num_classes"),
    ("type.json", '{"input_size": 3072, "hidden_sizes": "big", "num_classes": 10}', "mlp",
     "'hidden_sizes' must be a list of positive integers"),
    ("one_size.json", '{"input_size": 3072, "hidden_sizes": 64, "num_classes": 10}', "mlp",
     "'hidden_sizes' must be a list of positive integers, got 64"),
    ("zero_size.json", '{"input_size": 3072, "hidden_sizes": [64, 0], "num_classes": 10}', "mlp",
     r"'hidden_sizes' must be a list of positive integers, got \[64, 0\]"),
    ("short.json", '{"input_size": 3072, "hidden_sizes": [64], "num_classes": 10}', "mlp", "at least two"),
    ("act.json", '{"input_size": 3072, "hidden_sizes": [8, 8], "num_classes": 10, "activation": "gelu"}', "mlp",
     "'activation' must be one of 'relu', 'tanh', 'sigmoid'"),
    ("missing_key.json", '{"input_size": 3072, "num_classes": 10}', "mlp", "missing key 'hidden_sizes'"),
    ("patch.json", '{"num_classes": 10, "img_size": 32, "patch_size": 5, "embed_dim": 8, "num_blocks": 1}',
     "mlpmixer", "'patch_size' must divide the image size 32: valid choices are 1, 2, 4, 8, 16, 32"),
    ("bool.json", '{"num_classes": true}', "resnet18", "'num_classes' must be a positive integer"),
    ("float.json", '{"num_classes": 10, "img_size": 32, "patch_size": 4, "embed_dim": 256.0, "num_blocks": 1}',
     "mlpmixer", "'embed_dim' must be a positive integer, got 256.0"),
    ("float_patch.json", '{"num_classes": 10, "img_size": 32, "patch_size": 4.0, "embed_dim": 8, "num_blocks": 1}',
     "mlpmixer", "'patch_size' must divide the image size 32: valid choices are 1, 2, 4, 8, 16, 32, got 4.0"),
    ("two_unknown.json", '{"num_classes": 10, "width": 3, "depth": 3}', "resnet18", "unknown key 'depth'"),
    ("classes.json", '{"num_classes": 100}', "resnet18", "must be 10 for CIFAR-10"),
    ("drop.json", '{"num_classes": 10, "img_size": 32, "patch_size": 4, "embed_dim": 8, "num_blocks": 1, '
                  '"drop_rate": 1.5}', "mlpmixer", "'drop_rate' must be a number in"),
    ("drop_one.json", '{"num_classes": 10, "img_size": 32, "patch_size": 4, "embed_dim": 8, "num_blocks": 1, '
                      '"drop_rate": 1.0}', "mlpmixer", r"'drop_rate' must be a number in \[0, 1\), got 1.0"),
    ("drop_text.json", '{"num_classes": 10, "img_size": 32, "patch_size": 4, "embed_dim": 8, "num_blocks": 1, '
                       '"drop_rate": "0.1"}', "mlpmixer", r"'drop_rate' must be a number in \[0, 1\), got '0.1'"),
    ("drop_false.json", '{"num_classes": 10, "img_size": 32, "patch_size": 4, "embed_dim": 8, "num_blocks": 1, '
                        '"drop_rate": false}', "mlpmixer", r"'drop_rate' must be a number in \[0, 1\), got False"),
]


def test_a_model_config_that_is_a_folder_is_refused_naming_the_file_to_pass(fake_data_dir, tmp_path, capsys,
                                                                           monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = ["--model", "mlpmixer", "--model_config", "model_configs", "--data_dir", fake_data_dir,
            "--device", "cpu", "--logdir", str(tmp_path / "run")]
    assert main.main(argv) == 2
    assert capsys.readouterr().err == ("error: --model_config model_configs is a folder, not a model config file; "
                                       "pass --model_config model_configs/mlpmixer.json (the package's config for "
                                       "--model mlpmixer)\n")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_config_from_a_pipe_loads(tmp_path):
    # what bash's process substitution passes: --model_config <(jq '.embed_dim = 512' model_configs/mlpmixer.json)
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    writer = threading.Thread(target=pipe.write_text, args=('{"num_classes": 10}',))
    writer.start()
    try:
        assert load_model_config(str(pipe), "resnet18") == {"num_classes": 10}
    finally:
        writer.join(timeout=10)
        if writer.is_alive():  # the loader refused the pipe unread; reading it lets the writer finish
            pipe.read_text()
            writer.join()


def test_a_config_saved_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "resnet18.json"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"num_classes": 10}')  # as Windows Notepad saves UTF-8
    assert load_model_config(str(path), "resnet18") == {"num_classes": 10}


@pytest.mark.parametrize("encoded, said", [
    (b"\xff\xfe" + '{"num_classes": 10}'.encode("utf-16-le"), " (UTF-16, by its first bytes)"),  # PowerShell 5's `>`
    ('{"num_classes": 10} // caf\u00e9'.encode("latin-1"), ""),
])
def test_a_config_that_is_not_utf8_is_named_with_the_fix(encoded, said, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = tmp_path / "resnet18.json"
    path.write_bytes(encoded)
    with pytest.raises(UserError) as error:
        load_model_config(str(path), "resnet18")
    assert str(error.value) == (f"{path}: the model config is not UTF-8 text{said}; save it as UTF-8 (or copy "
                                "model_configs/resnet18.json and edit it)")


@pytest.mark.parametrize("model, text, defaults", [
    ("mlp", '{"input_size": 3072, "hidden_sizes": [64, 32], "num_classes": 10}', {"activation": "relu"}),
    ("resnet18", "{}", {"num_classes": 10}),
    ("mlpmixer", '{"num_classes": 10, "img_size": 32, "patch_size": 4, "embed_dim": 8, "num_blocks": 1}',
     {"drop_rate": 0.0, "activation": "gelu"}),
    ("mlpmixer", '{"num_classes": 10, "img_size": 32, "patch_size": 4, "embed_dim": 8, "num_blocks": 1, '
                 '"drop_rate": 0.0}', {"activation": "gelu"}),  # no dropout is a valid rate
])
def test_a_config_without_the_keys_that_have_defaults_gets_the_templates_defaults(model, text, defaults, tmp_path):
    given = json.loads(text)
    assert load_model_config(_write(tmp_path, "config.json", text), model) == {**given, **defaults}


@pytest.mark.parametrize("name,text,model,message", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_model_config_gets_one_clear_line(name, text, model, message, tmp_path, fake_data_dir, capsys):
    path = _write(tmp_path, name, text) if text is not None else str(tmp_path / name)
    logdir = tmp_path / "never_written"
    code = main.main(["--model", model, "--model_config", path, "--data_dir", fake_data_dir, "--device", "cpu",
                      "--logdir", str(logdir)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert re.search(message, err), err
    assert path in err  # the line names the file to fix
    assert not logdir.exists()


@pytest.mark.parametrize("given, model", [(given, model) for given in ("mlp", "resnet18", "mlpmixer")
                                          for model in ("mlp", "resnet18", "mlpmixer") if given != model])
def test_another_models_config_is_named_with_the_one_to_pass(given, model, fake_data_dir, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code = main.main(["--model", model, "--model_config", f"model_configs/{given}.json", "--data_dir", fake_data_dir,
                      "--device", "cpu"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (f"error: model_configs/{given}.json is a config for --model {given}, "
                                               f"not {model}; pass --model_config model_configs/{model}.json")


def test_a_config_with_only_another_models_required_keys_is_named_as_that_models(tmp_path, fake_data_dir, capsys):
    path = _write(tmp_path, "mine.json", '{"input_size": 3072, "hidden_sizes": [64, 32], "num_classes": 10}')
    code = main.main(["--model", "mlpmixer", "--model_config", path, "--data_dir", fake_data_dir, "--device", "cpu"])
    assert code == 2 and f"{path} is a config for --model mlp, not mlpmixer" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["mlp", "resnet18", "mlpmixer"])
def test_a_missing_config_names_the_packages_config_for_the_model_from_any_folder(model, tmp_path, monkeypatch,
                                                                                  fake_data_dir, capsys):
    """From the repository the hint is the path a student types; from elsewhere it is a path that exists there."""
    for cwd, expected in ((ROOT, f"model_configs/{model}.json"),
                          (tmp_path, os.path.join(ROOT, "model_configs", f"{model}.json"))):
        monkeypatch.chdir(cwd)
        code = main.main(["--model", model, "--model_config", "nope.json", "--data_dir", fake_data_dir,
                          "--device", "cpu"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and f"pass --model_config {expected} (the package's config for --model {model})" in err
        assert os.path.isfile(expected)


@pytest.mark.parametrize("model,config_of", [("resnet18", "mlp"), ("mlpmixer", "mlp"), ("mlp", "mlpmixer"),
                                             ("mlpmixer", "resnet18"), ("mlp", "resnet18")])
def test_another_models_config_is_named_as_such(model, config_of, fake_data_dir, capsys, monkeypatch):
    """``python main.py --model resnet18`` keeps the template's default --model_config, the MLP's."""
    monkeypatch.chdir(ROOT)
    flags = [] if config_of == "mlp" else ["--model_config", f"model_configs/{config_of}.json"]
    code = main.main(["--model", model, *flags, "--data_dir", fake_data_dir, "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"error: {'./' if not flags else ''}model_configs/{config_of}.json is a config "
                                        f"for --model {config_of}, not {model}; pass --model_config "
                                        f"model_configs/{model}.json")


def test_missing_data_gets_one_clear_line(tmp_path, tiny_configs, monkeypatch, capsys):
    import urllib.error
    import torchvision.datasets.utils as tv_utils
    monkeypatch.setattr(tv_utils, "download_url",
                        lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("no network")))
    logdir = tmp_path / "run"
    code = main.main(["--model_config", tiny_configs["mlp"], "--data_dir", str(tmp_path / "empty"),
                      "--device", "cpu", "--logdir", str(logdir)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "cifar-10-python.tar.gz" in err and "--data_dir" in err
    assert not logdir.exists()


def test_unwritable_logdir_gets_one_clear_line(run_args, tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    code = main.main(run_args("mlp", "--logdir", str(tmp_path / "a_file" / "run"), epochs=1))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: cannot create --logdir {tmp_path / 'a_file' / 'run'} (Not a directory)")


def test_a_batch_too_large_for_the_gpu_gets_one_line_with_the_sizes_to_lower(run_args, tmp_path, capsys, monkeypatch):
    from training.steps import TrainStep

    def out_of_memory(*args, **kwargs):  # the first sentences of torch's message, then its advice on fragmentation
        raise torch.cuda.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 3.81 GiB of which 1.10 GiB "
            "is free. Process 7 has 2.70 GiB memory in use. If reserved but unallocated memory is large try setting "
            "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.")
    monkeypatch.setattr(TrainStep, "compute", out_of_memory)
    logdir = tmp_path / "run"
    capsys.readouterr()
    assert main.main(run_args("mlp", "--logdir", str(logdir), epochs=1)) == 2
    assert capsys.readouterr().err == (
        "error: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 3.81 GiB of which 1.10 "
        "GiB is free; start again with a smaller --batch_size (training) or --eval_batch_size (validation and test), "
        "or a smaller model config\n")
    assert not logdir.exists()  # nothing was written, and the folder the run made is gone


def test_resume_refuses_missing_or_different_checkpoint(run_args, tmp_path, capsys, monkeypatch):
    logdir = str(tmp_path / "run")
    import torchvision.datasets.utils as tv_utils
    monkeypatch.setattr(tv_utils, "download_url", lambda *a, **k: pytest.fail("the data was fetched"))
    no_data = run_args("mlp", "--logdir", logdir, "--resume", epochs=1) + ["--data_dir", str(tmp_path / "empty")]
    assert main.main(no_data) == 2  # said before the data is read, which may have to be downloaded first
    assert capsys.readouterr().err == (f"error: --resume: no checkpoint at {logdir}/checkpoint.pt; run without "
                                       "--resume to start this run\n")
    assert not os.path.exists(logdir) and not os.path.exists(tmp_path / "empty")  # not even an empty folder
    assert main.main(run_args("mlp", "--logdir", logdir, epochs=1)) == 0
    before = {path.name: path.read_bytes() for path in pathlib.Path(logdir).iterdir()}
    different = run_args("mlp", "--logdir", logdir, "--resume", "--lr", "0.5", epochs=2)
    assert main.main(different + ["--data_dir", str(tmp_path / "empty")]) == 2  # before the data is read, too
    assert "made with other settings: lr 0.001, now 0.5; resume with" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "empty")
    assert {path.name: path.read_bytes() for path in pathlib.Path(logdir).iterdir()} == before  # nothing written or lost


def test_resume_refuses_a_checkpoint_made_with_another_model_config(run_args, tiny_configs, tmp_path, capsys):
    logdir = str(tmp_path / "run")
    assert main.main(run_args("mlp", "--logdir", logdir, epochs=1)) == 0
    made_with = load_model_config(tiny_configs["mlp"], "mlp")
    assert made_with["hidden_sizes"] == [32, 16] and made_with["activation"] == "relu"
    wider = _write(tmp_path, "wider.json", json.dumps({**made_with, "hidden_sizes": [64, 16], "activation": "tanh"}))
    capsys.readouterr()
    argv = run_args("mlp", "--logdir", logdir, "--resume", "--model_config", wider, "--lr", "0.01", epochs=2)
    assert main.main(argv) == 2
    assert capsys.readouterr().err == (f"error: --resume: the checkpoint in {logdir} was made with other settings: "
                                       "lr 0.001, now 0.01; the model config's activation 'relu', now 'tanh'; the "
                                       "model config's hidden_sizes [32, 16], now [64, 16]; resume with the same "
                                       "settings or use a new --logdir\n")


def test_resume_refuses_another_copy_of_the_data_and_a_checkpoint_older_than_that_check_resumes(run_args, tmp_path,
                                                                                                  capsys):
    """A run resumed on another machine must not train on, and test with, another copy of CIFAR-10 (a JPEG copy, a
    fake one) than the one it began on; a moved copy is the same data."""
    from training.fake_data import write_fake_cifar10

    logdir = tmp_path / "run"
    assert main.main(run_args("mlp", "--logdir", str(logdir), epochs=1)) == 0
    made_on = read_results(logdir)["data"]["test_images_sha1"]
    before = {path.name: path.read_bytes() for path in logdir.iterdir()}
    other = tmp_path / "other"
    write_fake_cifar10(str(other), train_per_batch=24, test=30, seed=1)
    other_sha1 = load_cifar10(str(other)).test_fingerprint()
    capsys.readouterr()
    assert main.main(run_args("mlp", "--logdir", str(logdir), "--resume", epochs=2) + ["--data_dir", str(other)]) == 2
    assert capsys.readouterr().err == (
        f"error: --resume: the checkpoint in {logdir} was trained on another copy of CIFAR-10 (its test images' SHA-1 "
        f"is {made_on}, not {other_sha1} as in --data_dir {other}); resume with the copy it was trained on, or start "
        "again in a new --logdir\n")
    assert {path.name: path.read_bytes() for path in logdir.iterdir()} == before
    path = logdir / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    del state["signature"]["test_images_sha1"]  # as versions before this check wrote it: the data is not known
    torch.save(state, path)
    assert main.main(run_args("mlp", "--logdir", str(logdir), "--resume", epochs=2)) == 0
    assert read_results(logdir)["epochs_completed"] == 2


def test_a_data_error_leaves_an_earlier_run_in_its_logdir_as_it_was(run_args, tmp_path, capsys, monkeypatch):
    from training import engine

    logdir = tmp_path / "run"
    assert main.main(run_args("mlp", "--logdir", str(logdir), epochs=1)) == 0
    before = {path.name: path.read_bytes() for path in logdir.iterdir()}
    capsys.readouterr()

    def broken_data(data_dir):
        assert (logdir / ".run.lock").exists() or os.name != "posix"  # held while the data is read (flock)
        raise UserError("the data is broken")
    monkeypatch.setattr(engine, "load_cifar10", broken_data)
    for extra in ([], ["--resume", "--epochs", "2"]):
        assert main.main(run_args("mlp", "--logdir", str(logdir), *extra)) == 2
        assert capsys.readouterr().err == "error: the data is broken\n"  # not a note that the run is replaced
        assert {path.name: path.read_bytes() for path in logdir.iterdir()} == before  # nothing written or lost


@pytest.mark.parametrize("content, message", [
    (b"garbage", "cannot read {path} (UnpicklingError); delete it and start again without --resume"),
    ({"model": {}, "epoch": 3}, "{path} is not a checkpoint that main.py wrote (it has no optimizer); move it "
                                "elsewhere and start again without --resume, or give the --logdir of the run to "
                                "continue"),
    (torch.zeros(3), "{path} is not a checkpoint that main.py wrote (it holds a Tensor, not a dict)"),
])
def test_a_damaged_or_foreign_checkpoint_is_refused_in_one_line(content, message, run_args, tmp_path, capsys):
    logdir = tmp_path / "run"
    logdir.mkdir()
    path = logdir / "checkpoint.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    before = path.read_bytes()
    assert main.main(run_args("mlp", "--logdir", str(logdir), "--resume")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --resume: {message.format(path=path)}") and len(err.splitlines()) == 1
    assert os.listdir(logdir) == ["checkpoint.pt"] and path.read_bytes() == before


@pytest.mark.skipif(os.name != "posix", reason="runs hold their --logdir with flock, which Windows lacks")
def test_a_logdir_that_another_run_writes_is_refused_and_freed_when_that_run_dies(run_args, tmp_path, capsys,
                                                                                   monkeypatch):
    logdir = tmp_path / "run"
    assert main.main(run_args("mlp", "--logdir", str(logdir), epochs=1)) == 0  # a finished run frees its folder
    assert not (logdir / ".run.lock").exists()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom training.persistence import logdir_held\n"
                               "with logdir_held(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)",
                               str(logdir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        before = {path.name: path.read_bytes() for path in logdir.iterdir()}
        capsys.readouterr()
        import torchvision.datasets.utils as tv_utils
        monkeypatch.setattr(tv_utils, "download_url", lambda *a, **k: pytest.fail("the data was fetched"))
        for extra in ([], ["--resume", "--epochs", "2"]):  # refused before the data is read
            assert main.main(run_args("mlp", "--logdir", str(logdir), *extra, "--data_dir", str(tmp_path / "no"))) == 2
            assert capsys.readouterr().err == (f"error: --logdir {logdir} is being written by another run (pid "
                                               f"{holder.pid} on {os.uname().nodename}); wait for it to end, or give "
                                               "another --logdir\n")
            assert {path.name: path.read_bytes() for path in logdir.iterdir()} == before  # nothing written or lost
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert main.main(run_args("mlp", "--logdir", str(logdir), "--resume", epochs=2)) == 0  # no stale lock


def test_a_logdir_on_a_filesystem_without_locks_is_written_unheld_with_a_warning(run_args, tmp_path, monkeypatch):
    import errno
    import types

    from training import persistence

    def flock(f, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
    monkeypatch.setattr(persistence, "fcntl", types.SimpleNamespace(flock=flock, LOCK_EX=2, LOCK_NB=4, LOCK_UN=8))
    logdir = tmp_path / "run"
    with pytest.warns(UserWarning, match=f"cannot lock --logdir {logdir} .*: nothing keeps a second run out of it"):
        assert main.main(run_args("mlp", "--logdir", str(logdir), epochs=1)) == 0
    assert sorted(path.name for path in logdir.iterdir()) == ["checkpoint.pt", "results.json"]  # no lock file left
    (logdir / ".run.lock").write_text("pid 7 on elsewhere\n")  # where flock works, that host may hold it
    with pytest.warns(UserWarning, match="nothing keeps a second run out of it"):
        assert main.main(run_args("mlp", "--logdir", str(logdir), "--resume", epochs=2)) == 0
    assert (logdir / ".run.lock").read_text() == "pid 7 on elsewhere\n"  # another's file is left to it


@pytest.mark.skipif(os.name != "posix", reason="runs hold their --logdir with flock, which Windows lacks")
def test_a_lock_file_removed_by_its_holder_while_another_run_opened_it_is_not_taken_as_free(tmp_path, monkeypatch):
    import fcntl

    from training import persistence

    lock_path, held_by_another = tmp_path / persistence.LOCK_FILE, []

    def open_as_the_holder_leaves(path, mode):
        opened = open(path, mode)
        if not held_by_another:  # the run that held the old file removes it and ends; a third run locks a new one
            os.unlink(path)
            held_by_another.append(open(path, "a+"))
            held_by_another[0].write("pid 7 on elsewhere\n")
            held_by_another[0].flush()
            fcntl.flock(held_by_another[0], fcntl.LOCK_EX)
        return opened
    monkeypatch.setattr(persistence, "open", open_as_the_holder_leaves, raising=False)
    with pytest.raises(persistence.LogdirBusy, match=r"being written by another run \(pid 7 on elsewhere\)"):
        with persistence.logdir_held(str(tmp_path)):
            pass
    held_by_another[0].close()
    assert lock_path.read_text() == "pid 7 on elsewhere\n"

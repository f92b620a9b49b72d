"""A rerun of a study must match the flags, settings and data it began with, and is refused, with each difference,
where they differ; a study none of whose runs has trained an epoch takes the flags of the command that fixes it. A rerun
does not train over a run folder that trained without a record in the study (copied in from another run of it)."""
import json
import os
import re
import shutil
import socket
import time

import pytest
import torch
from optuna.trial import TrialState

from helpers import jobs_of, load_study, read_json
from report_logs import markdown_of
import studies.__main__ as studies_cli
from studies.__main__ import main as studies_main
from studies.liveness import LOST_AFTER_SECONDS, process_started
from training import engine
from training.errors import UserError
from training.fake_data import write_fake_cifar10


@pytest.mark.parametrize("flag, value, message", [("--weight_decay", "0.1", "weight_decay 0.0005, now 0.1"),
                                                  ("--epochs", "2", "epochs 1, now 2")])
def test_a_rerun_with_other_flags_is_refused(study_args, tmp_path, capsys, flag, value, message):
    assert studies_main(study_args("mlp_activation", "--values", "relu")) == 0
    assert studies_main(study_args("mlp_activation", "--values", "relu", flag, value)) == 2
    assert f"was started with other flags ({message}); rerun with" in capsys.readouterr().err


def test_a_refused_rerun_of_a_search_leaves_its_recorded_budget(study_args, tmp_path, capsys):
    tiny = ["--set", "embed_dim=16", "--set", "num_blocks=1"]
    assert studies_main(study_args("mlpmixer_best", "--trials", "1", *tiny)) == 0
    assert studies_main(study_args("mlpmixer_best", "--trials", "5", "--epochs", "2", *tiny)) == 2
    assert "was started with other flags (epochs 1, now 2)" in capsys.readouterr().err
    assert load_study(str(tmp_path / "out"), "mlpmixer_best").user_attrs["trials"] == 1


def test_a_flag_added_since_the_study_began_counts_at_its_default(study_args, tmp_path, capsys):
    assert studies_main(study_args("mlp_activation", "--values", "relu")) == 0
    study = load_study(str(tmp_path / "out"), "mlp_activation")
    older = {key: value for key, value in study.user_attrs["fingerprint"].items() if key != "augment"}
    study.set_user_attr("fingerprint", older)  # as an older version of the package recorded it
    assert studies_main(study_args("mlp_activation", "--values", "relu")) == 0
    assert studies_main(study_args("mlp_activation", "--values", "relu", "--augment", "padcrop")) == 2
    assert "was started with other flags (augment 'template', now 'padcrop')" in capsys.readouterr().err


def _stop_before_the_first_epoch(study_args, monkeypatch, *extra):
    """Launch mlp_activation on a GPU that this PyTorch has no kernels for (Kaggle's P100): its first run stops before
    it reads the data, in the line that says to pass --device cpu, and leaves its trial running."""
    def no_kernels(requested):
        raise UserError("this PyTorch has no CUDA kernels for Tesla P100-PCIE-16GB (compute capability 6.0): ..., "
                        "or pass --device cpu")
    argv = study_args("mlp_activation", "--values", "relu", "tanh", *extra)
    argv[argv.index("--device") + 1] = "cuda"
    with monkeypatch.context() as patched:
        patched.setattr(engine, "resolve_device", no_kernels)
        assert studies_main(argv) == 2


def test_a_study_stopped_before_any_epoch_takes_the_flags_of_the_command_that_fixes_it(study_args, tmp_path, capsys,
                                                                                      monkeypatch):
    _stop_before_the_first_epoch(study_args, monkeypatch, "--weight_decay", "0.1")
    assert "or pass --device cpu" in capsys.readouterr().err
    assert studies_main(study_args("mlp_activation", "--values", "relu", "tanh")) == 0
    assert (f"study mlp_activation in {tmp_path / 'out' / 'mlp_activation'}: none of its runs has trained an epoch "
            "yet, so it takes this command's flags (device 'cuda', now 'cpu'; weight_decay 0.1, now 0.0005)\n"
            ) in capsys.readouterr().out
    jobs = jobs_of(load_study(str(tmp_path / "out"), "mlp_activation"))
    assert {run: states[-1] for run, states in jobs.items()} == {
        "activation-relu_seed-42": TrialState.COMPLETE, "activation-tanh_seed-42": TrialState.COMPLETE}
    assert studies_main(study_args("mlp_activation", "--values", "relu", "tanh", epochs=2)) == 2  # now they have
    assert "was started with other flags (epochs 1, now 2)" in capsys.readouterr().err


def test_a_study_stopped_by_ctrl_c_in_its_first_epoch_takes_the_corrected_flags(study_args, tmp_path, capsys,
                                                                                 monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt
    with monkeypatch.context() as patched:
        patched.setattr(engine, "train", interrupted)
        assert studies_main(study_args("mlp_activation", "--values", "relu", "--weight_decay", "0.1")) == 130
    results = read_json(tmp_path / "out" / "mlp_activation" / "runs" / "activation-relu_seed-42" / "results.json")
    assert (results["status"], results["epochs_completed"]) == ("interrupted", 0)
    assert studies_main(study_args("mlp_activation", "--values", "relu")) == 0
    assert "flags (weight_decay 0.1, now 0.0005)\n" in capsys.readouterr().out


def test_runs_that_failed_before_any_epoch_train_again_with_the_flags_that_fix_them(study_args, tmp_path, capsys,
                                                                                   monkeypatch):
    def out_of_memory_at_16(epoch, model, loader, optimizer, args, step):
        if args.batch_size == 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 MiB")
        return train(epoch, model, loader, optimizer, args, step)
    train = engine.train
    monkeypatch.setattr(engine, "train", out_of_memory_at_16)
    assert studies_main(study_args("mlp_activation", "--values", "relu", "tanh")) == 0  # batch size 16
    assert "study mlp_activation: 2 error" in capsys.readouterr().out
    assert studies_main(study_args("mlp_activation", "--values", "relu", "tanh", "--batch_size", "8")) == 0
    out = capsys.readouterr().out
    assert "so it takes this command's flags (batch_size 16, now 8) and trains again the 2 runs that failed " in out
    assert out.endswith("study mlp_activation: 2 completed\n")
    assert studies_main(study_args("mlp_activation", "--values", "relu", "tanh", "--batch_size", "8")) == 0
    assert "trial" not in capsys.readouterr().out  # once they completed, a rerun trains nothing


def test_status_counts_the_runs_that_failed_under_a_studys_old_flags_as_left_to_train(study_args, tmp_path, capsys,
                                                                                     monkeypatch):
    def out_of_memory(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 MiB")
    with monkeypatch.context() as patched:
        patched.setattr(engine, "train", out_of_memory)
        assert studies_main(study_args("mlp_activation", "--values", "relu", "tanh")) == 0
    with monkeypatch.context() as patched:  # the command with the fixing flag stops before its worker claims a run
        patched.setattr(studies_cli, "work", lambda *args: 0)
        assert studies_main(study_args("mlp_activation", "--values", "relu", "tanh", "--batch_size", "8")) == 0
    capsys.readouterr()
    assert studies_main(["status", "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out == "mlp_activation: 2 to resume\n"
    assert studies_main(study_args("mlp_activation", "--values", "relu", "tanh", "--batch_size", "8")) == 0
    assert capsys.readouterr().out.endswith("study mlp_activation: 2 completed\n")

def _claimed_again(tmp_path, **worker):
    """The stopped study's first run, claimed again by the worker ``worker`` describes (host, pid...): the trial."""
    running = load_study(str(tmp_path / "out"), "mlp_activation").ask()
    for name, value in {"run_dir": "activation-relu_seed-42", **worker}.items():
        running.set_user_attr(name, value)
    return running


def test_a_study_whose_run_a_worker_here_may_be_training_keeps_its_flags(study_args, tmp_path, capsys, monkeypatch):
    _stop_before_the_first_epoch(study_args, monkeypatch)
    # a worker on this host, alive (pytest's parent stands in for it), claims the run again: in its first epoch, perhaps
    _claimed_again(tmp_path, host=socket.gethostname(), pid=os.getppid(), pid_started=process_started(os.getppid()))

    def work(*args):  # rather than wait for the stand-in worker forever
        raise AssertionError("the study went on with other flags than its live worker's")
    monkeypatch.setattr(studies_cli, "work", work)
    assert studies_main(study_args("mlp_activation", "--values", "relu", "tanh")) == 2
    assert capsys.readouterr().err.endswith(
        f"error: study mlp_activation in {tmp_path / 'out' / 'mlp_activation'} was started with other flags (device "
        "'cuda', now 'cpu'), and a worker may be training its run activation-relu_seed-42 with them: it runs on "
        f"{socket.gethostname()} (pid {os.getppid()}); stop it and rerun, or rerun with the flags it was started "
        "with\n")


def test_a_study_whose_worker_elsewhere_fell_silent_takes_new_flags_once_it_counts_as_gone(study_args, tmp_path,
                                                                                          capsys, monkeypatch):
    _stop_before_the_first_epoch(study_args, monkeypatch)
    silent = _claimed_again(tmp_path, host="node-7", pid=4242, heartbeat=time.time() - 20)
    assert studies_main(study_args("mlp_activation", "--values", "relu", "tanh")) == 2
    assert re.search(r"a worker may be training its run activation-relu_seed-42 with them: it runs on node-7 "
                     r"\(pid 4242\), last heard 2\d s ago; if it has stopped, rerun in 1[56]\d s, when the study "
                     r"counts it as gone, else stop it first, or rerun with the flags it was started with\n$",
                     capsys.readouterr().err)
    silent.set_user_attr("heartbeat", time.time() - LOST_AFTER_SECONDS - 1)
    assert studies_main(study_args("mlp_activation", "--values", "relu", "tanh")) == 0
    assert "so it takes this command's flags (device 'cuda', now 'cpu')" in capsys.readouterr().out


def test_a_refusal_names_every_flag_held_setting_and_model_config_key_that_differs(study_args, tiny_configs, tmp_path,
                                                                                   capsys):
    tiny = ["--trials", "1", "--set", "num_blocks=1"]
    assert studies_main(study_args("mlpmixer_best", *tiny, "--set", "embed_dim=16")) == 0
    config = read_json(tiny_configs["mlpmixer"])
    other_config = tmp_path / "mixer.json"
    other_config.write_text(json.dumps({**config, "drop_rate": 0.25}))
    argv = study_args("mlpmixer_best", *tiny, "--lr", "0.01", "--weight_decay", "0.001")
    argv[argv.index("--model_config") + 1] = str(other_config)
    assert studies_main(argv) == 2
    assert (f"was started with other flags (embed_dim 16, now searched; lr searched, now 0.01; the model config's "
            f"drop_rate {config['drop_rate']!r}, now 0.25; weight_decay searched, now 0.001); rerun with the flags it "
            "was started with, or use a new --out (or --storage)\n") in capsys.readouterr().err


def test_flag_changes_are_said_one_by_one():
    from studies.plan import _flag_changes
    recorded = {"epochs": 1, "device": "cuda", "data": "0a028011e17a", "model_config": {"drop_rate": 0.0, "depth": 2},
                "held": {"lr": 0.01, "embed_dim": 16}, "tta": "flip"}  # a flag this version no longer has
    now = {"epochs": 2, "device": "cuda", "data": "3cc094d4766c", "model_config": {"drop_rate": 0.1, "depth": 2},
           "held": {"embed_dim": 32, "patch_size": 4}}
    assert _flag_changes(recorded, now, searched={"lr"}) == (
        "CIFAR-10 contents 0a028011e17a, now 3cc094d4766c; embed_dim 16, now 32; epochs 1, now 2; lr 0.01, now "
        "searched; patch_size from the model config, now 4; the model config's drop_rate 0.0, now 0.1; tta 'flip', "
        "now not given")
    assert _flag_changes(recorded, recorded, searched={"lr"}) == ""


def test_a_worker_whose_study_took_other_flags_before_its_first_claim_trains_nothing(study_args, tmp_path, capsys,
                                                                                    monkeypatch):
    work = studies_cli.work

    def another_command_opens_the_study_first(plan, study, lock):  # between this worker's open_study and its claim
        monkeypatch.setattr(studies_cli, "work", lambda *args: 0)  # that command's own worker is yet to claim
        assert studies_main(study_args("mlp_activation", "--values", "relu", "--weight_decay", "0.1")) == 0
        return work(plan, study, lock)
    monkeypatch.setattr(studies_cli, "work", another_command_opens_the_study_first)
    assert studies_main(study_args("mlp_activation", "--values", "relu")) == 2
    assert capsys.readouterr().err.endswith(
        "error: study mlp_activation took other flags meanwhile, from a command started before any of its runs "
        "trained an epoch; rerun with that command's flags\n")
    assert load_study(str(tmp_path / "out"), "mlp_activation").get_trials() == []


def test_a_study_with_a_run_that_failed_after_an_epoch_keeps_its_flags(study_args, tmp_path, capsys, monkeypatch):
    trained = []

    def fail_in_the_second_epoch(epoch, *args):
        if epoch == 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        trained.append(epoch)
        return train(epoch, *args)
    train = engine.train
    monkeypatch.setattr(engine, "train", fail_in_the_second_epoch)
    assert studies_main(study_args("mlp_activation", "--values", "relu", epochs=2)) == 0
    assert trained == [1]
    trial, = load_study(str(tmp_path / "out"), "mlp_activation").get_trials()
    assert (trial.state, trial.user_attrs["outcome"], trial.intermediate_values) == (TrialState.FAIL, "error", {})
    assert studies_main(study_args("mlp_activation", "--values", "relu", epochs=3)) == 2
    assert "was started with other flags (epochs 2, now 3)" in capsys.readouterr().err


def test_a_study_knows_its_data_by_contents_not_by_folder(study_args, fake_data_dir, tmp_path, capsys):
    assert studies_main(study_args("mlp_activation", "--values", "relu")) == 0
    moved = tmp_path / "moved"
    shutil.copytree(fake_data_dir, moved)
    assert studies_main(study_args("mlp_activation", "--values", "relu", "tanh", "--data_dir", str(moved))) == 0
    jobs = jobs_of(load_study(str(tmp_path / "out"), "mlp_activation"))
    assert {os.path.basename(run): states for run, states in jobs.items()} == {
        "activation-relu_seed-42": [TrialState.COMPLETE], "activation-tanh_seed-42": [TrialState.COMPLETE]}
    other = tmp_path / "other"
    write_fake_cifar10(str(other), train_per_batch=24, test=30, seed=1)
    assert studies_main(study_args("mlp_activation", "--values", "relu", "--data_dir", str(other))) == 2
    assert re.search(r"was started on another copy of CIFAR-10 \(contents [0-9a-f]{12}, --data_dir here "
                     r"[0-9a-f]{12}\); point --data_dir at the copy it used", capsys.readouterr().err)


def test_a_study_recorded_with_its_data_folder_still_resumes(study_args, tmp_path):
    assert studies_main(study_args("mlp_activation", "--values", "relu")) == 0
    study = load_study(str(tmp_path / "out"), "mlp_activation")
    older = {key: value for key, value in study.user_attrs["fingerprint"].items() if key != "data"}
    study.set_user_attr("fingerprint", {**older, "data_dir": "/where/it/was"})  # as an older version recorded it
    assert studies_main(study_args("mlp_activation", "--values", "relu")) == 0


@pytest.mark.parametrize("files, trained", [
    ({}, False),
    ({"results.json": '{"epochs_completed": 0, "status": "interrupted"}'}, False),  # Ctrl-C in the first epoch
    ({"results.json": '{"epochs_completed": 0, "status": "diverged"}'}, True),  # its first epoch gave NaN
    ({"results.json": '{"epochs_completed": 2, "status": "failed"}'}, True),
    ({"results.json": '{"epochs_completed": 2, "stat'}, True),  # cut short: it may hold epochs
    ({"results.json": "[]"}, True),  # edited by hand
    ({"checkpoint.pt": ""}, True),  # a checkpoint holds an epoch
])
def test_a_run_folder_has_trained_when_it_may_hold_an_epoch(tmp_path, files, trained):
    from studies.scheduler import has_trained
    run_dir = tmp_path / "runs" / "activation-relu_seed-42"
    run_dir.mkdir(parents=True)
    for name, text in files.items():
        (run_dir / name).write_text(text)
    assert has_trained([], str(tmp_path / "runs")) == trained
    assert not has_trained([], str(tmp_path / "no_runs_yet"))


def _copy_in_a_run_made_elsewhere(study_args, tmp_path, study, run, elsewhere_flags, here_flags):
    """Run ``study`` with ``elsewhere_flags`` in another --out and with ``here_flags`` in this one, then copy its folder
    ``run`` from there into this one's runs, as runs made on two machines are merged; the copied results.json."""
    elsewhere = tmp_path / "elsewhere"
    assert studies_main([*study_args(study, *elsewhere_flags), "--out", str(elsewhere)]) == 0
    assert studies_main(study_args(study, *here_flags)) == 0
    copy = tmp_path / "out" / study / "runs" / run
    shutil.copytree(elsewhere / study / "runs" / run, copy)
    return copy / "results.json"


def _refused_over(tmp_path, study, run, how):
    runs, journal = tmp_path / "out" / study / "runs", tmp_path / "out" / study / "journal.log"
    return (f"error: 1 run in {runs} trained, but {journal} has no record of it ({run}): copied in from another run of "
            "the study, or recorded elsewhere (another --storage, a journal since removed); this command would train "
            f"it again over what it holds: {how}\n")


def test_a_finished_run_copied_in_from_another_run_of_the_study_is_not_trained_again_over(study_args, tmp_path, capsys):
    """The study that has no record of the copied run would train it again in its folder. Leaving its value out of
    --values runs the rest of the grid."""
    results = _copy_in_a_run_made_elsewhere(study_args, tmp_path, "mlp_activation", "activation-tanh_seed-42",
                                            ["--values", "tanh"], ["--values", "relu"])
    finished = results.read_bytes()
    capsys.readouterr()
    assert studies_main(study_args("mlp_activation")) == 2
    assert capsys.readouterr().err == _refused_over(tmp_path, "mlp_activation", "activation-tanh_seed-42", "move it "
                                                    "aside to train it here, or leave activation tanh out of --values")
    assert results.read_bytes() == finished
    assert not (tmp_path / "out" / "mlp_activation" / "runs" / "activation-sigmoid_seed-42").exists()
    assert studies_main(["status", "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out == (
        "mlp_activation: 1 completed\n  activation-tanh_seed-42: trained, but the study has no record of it (copied in "
        "from another run of the study, or recorded in another --storage); a launch that would train it refuses to\n")
    assert studies_main(study_args("mlp_activation", "--values", "relu", "sigmoid")) == 0
    assert jobs_of(load_study(str(tmp_path / "out"), "mlp_activation")) == {
        "activation-relu_seed-42": [TrialState.COMPLETE], "activation-sigmoid_seed-42": [TrialState.COMPLETE]}
    assert results.read_bytes() == finished
    ranking = re.search(r"Final validation accuracy by activation \(mean over completed runs\), highest first: (.*)\n",
                        markdown_of(str(tmp_path / "out"))).group(1)  # the copied run, read beside the others
    assert sorted(part.split(":")[0] for part in ranking.split(", ")) == ["relu", "sigmoid", "tanh"]


def test_a_run_copied_in_before_the_studys_first_launch_is_left_to_the_launches_that_leave_it_out(study_args,
                                                                                                   tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    assert studies_main([*study_args("mlp_activation", "--values", "tanh"), "--out", str(elsewhere)]) == 0
    runs = tmp_path / "out" / "mlp_activation" / "runs"
    shutil.copytree(elsewhere / "mlp_activation" / "runs" / "activation-tanh_seed-42", runs / "activation-tanh_seed-42")
    finished = (runs / "activation-tanh_seed-42" / "results.json").read_bytes()
    capsys.readouterr()
    assert studies_main(study_args("mlp_activation")) == 2
    assert capsys.readouterr().err == _refused_over(tmp_path, "mlp_activation", "activation-tanh_seed-42", "move it "
                                                    "aside to train it here, or leave activation tanh out of --values")
    assert studies_main(study_args("mlp_activation", "--values", "relu", "sigmoid")) == 0
    assert (runs / "activation-tanh_seed-42" / "results.json").read_bytes() == finished
    assert sorted(os.listdir(runs)) == [f"activation-{name}_seed-42" for name in ("relu", "sigmoid", "tanh")]


def test_a_search_refuses_every_trained_run_folder_it_has_no_record_of(study_args, tmp_path, capsys):
    """A search names its trials' folders by the order of its draws, so any of them could be trained over."""
    results = _copy_in_a_run_made_elsewhere(study_args, tmp_path, "mlpmixer_best", "trial-0001", ["--trials", "2"],
                                            ["--trials", "1"])
    finished = results.read_bytes()
    capsys.readouterr()
    assert studies_main(study_args("mlpmixer_best", "--trials", "2")) == 2
    assert capsys.readouterr().err == _refused_over(tmp_path, "mlpmixer_best", "trial-0001", "move it aside to train "
                                                    "it here")
    assert results.read_bytes() == finished
    assert len(load_study(str(tmp_path / "out"), "mlpmixer_best").trials) == 2  # the trial and its final run


def test_the_run_names_of_a_study_are_those_its_runs_train_in_and_not_a_backups():
    import types

    from studies.definitions import STUDIES
    from studies.plan import Plan
    from studies.scheduler import final_run_dir, is_run_name

    for study in STUDIES.values():
        if study.is_search:
            earlier_best = {"final_seed-43": (None, None, types.SimpleNamespace(user_attrs={"source_trial": 2}))}
            names = ["trial-0000", "trial-12345", final_run_dir(43, 5, {}), final_run_dir(43, 5, earlier_best)]
            assert names[3] == "final_seed-43_trial-0005"
        else:
            names = list(Plan(study, "out", [], {}, {}, seed=42, seeds=[42, 4294967295],
                              values=list(study.grid.choices)).grid_jobs())
        assert all(is_run_name(study, name) for name in names), study.name
        assert not any(is_run_name(study, f"{name}_backup") or is_run_name(study, f"copy of {name}") for name in names)
    assert not is_run_name(STUDIES["mlp_activation"], "activation-gelu_seed-42")  # not one of the grid's choices


def test_a_backup_copy_of_a_run_in_a_searchs_folder_is_left_alone(study_args, tmp_path, capsys):
    assert studies_main(study_args("mlpmixer_best", "--trials", "1")) == 0
    runs = tmp_path / "out" / "mlpmixer_best" / "runs"
    shutil.copytree(runs / "trial-0000", runs / "trial-0000_backup")
    assert studies_main(study_args("mlpmixer_best", "--trials", "2")) == 0
    capsys.readouterr()
    assert studies_main(["status", "--out", str(tmp_path / "out")]) == 0
    status = capsys.readouterr().out
    assert status.startswith("mlpmixer_best: search trials: 2 completed (of 2); final runs: ")
    assert "trial-0000_backup" not in status and status.count("\n") == 1
    assert read_json(runs / "trial-0000_backup" / "results.json") == read_json(runs / "trial-0000" / "results.json")

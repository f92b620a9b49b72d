"""A study's launch is checked before anything is written: its flags, its settings, its data and its output
folder; on a CPU it says first what an epoch costs there. (What a rerun must match: test_study_reruns.py.)"""
import os
import pathlib
import re
import threading

import pytest
import torch

from helpers import load_study
from report_logs import write_activation_runs
import studies.__main__ as studies_cli
from studies.__main__ import main as studies_main
from training.cifar10 import load_cifar10


@pytest.mark.parametrize("name, extra, message", [
    ("resnet18_lr", ["--lr", "0.1"], "resnet18_lr varies lr; choose its values with --values, not --lr"),
    ("mlp_activation", ["--set", "activation=tanh"],
     "mlp_activation varies activation; choose its values with --values, not --set activation"),
    ("mlp_activation", ["--set", "activation=swish"],  # not a value it could take either: the first problem first
     "mlp_activation varies activation; choose its values with --values, not --set activation"),
    ("mlpmixer_patch", ["--set", "patch_size=5"],
     "mlpmixer_patch varies patch_size; choose its values with --values, not --set patch_size"),
    ("resnet18_lr", ["--values", "0.5", "0.7"], "--values: 0.5 is not a valid lr"),  # the first one named
    ("mlp_activation", ["--epochs", "0", "--batch_size", "0"], "error: --batch_size must be at least 1, got 0\n"),
    ("mlpmixer_patch", ["--values", "four"], "--values: patch_size takes int values; choose from 1, 2, 4, 8, 16, 32"),
    ("mlpmixer_patch", ["--values", ","], "--values: patch_size takes int values; choose from 1, 2, 4, 8, 16, 32"),
    ("mlpmixer_patch", ["--values", "4,3"], "--values: 3 is not a valid patch_size"),
    ("resnet18_lr", ["--logdir", "x"], "--logdir is set by the study"),
    ("resnet18_lr", ["--set", "width=3"], "--set width=3: expected KEY=VALUE"),
    ("resnet18_lr", ["--set", "lr=3"], "--set lr=3: expected KEY=VALUE"),
    ("mlpmixer_best", ["--set", "embed_dim"], "--set embed_dim: expected KEY=VALUE"),
    ("resnet18_lr", ["--optimizer", "sgd"], "resnet18_lr holds optimizer at 'adam' (the question it answers); "
                                            "remove --optimizer"),
    ("mlpmixer_best", ["--set", "patch_size=8"], "mlpmixer_best holds patch_size at 4 (the question it answers); "
                                                 "remove --set patch_size"),
    ("mlpmixer_best", ["--trials", "3", "--values", "2"], "no grid"),
    ("mlp_activation", ["--trials", "3"], "--trials: mlp_activation is a grid, which trains each of its settings "
                                          "once per seed; choose them with --values"),
    ("mlp_activation", ["--valid_size", "5000"], "--valid_size 5000 must be between 1 and"),
    ("mlp_activation", ["--workers", "0"], "--workers must be at least 1, got 0"),
    ("mlp_activation", ["--seeds", "-2"], "--seeds must be at least 1, got -2"),
    ("resnet18_best", ["--trials", "0"], "--trials must be at least 1, got 0"),
    ("mlp_activation", ["--search_minutes", "30"], "--search_minutes: mlp_activation is a grid, with no search to "
                                                   "stop; choose its settings with --values"),
    ("resnet18_best", ["--search_minutes", "0"], "--search_minutes must be a positive number of minutes, got 0"),
    ("resnet18_best", ["--search_minutes", "-5"], "--search_minutes must be a positive number of minutes, got -5"),
    ("mlpmixer_best", ["--search_minutes", "inf"], "--search_minutes must be a positive number of minutes, got inf"),
    ("mlpmixer_best", ["--search_minutes", "nan"], "--search_minutes must be a positive number of minutes, got nan"),
    ("mlp_activation", ["--seed", "4294967294", "--seeds", "3"],
     "--seeds 3 from --seed 4294967294 reaches seed 4294967296 in mlp_activation, past numpy's largest "
     "(4294967295); lower --seed"),
    ("resnet18_best", ["--seed", "4294967295"],  # its final run takes the seed after its trials'
     "--seeds 1 from --seed 4294967295 reaches seed 4294967296 in resnet18_best"),
])
def test_bad_study_flags_are_refused_before_anything_is_written(study_args, tmp_path, capsys, monkeypatch, name,
                                                                extra, message):
    data_reads = []  # a mistyped flag must not wait for the data's download first
    monkeypatch.setattr(studies_cli, "load_cifar10", lambda *args: data_reads.append(args) or load_cifar10(*args))
    assert studies_main(study_args(name, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")
    assert data_reads == [] or "--valid_size" in extra  # only the validation split's size needs the data


@pytest.mark.parametrize("argv, named", [
    (["report", "--output", "elsewhere"], "--output elsewhere"),  # a mistyped --out: not the default folder's report
    (["status", "--storage_url", "x"], "--storage_url x"),
    (["report", "--trials", "3"], "--trials 3"),  # a flag of run's, or of main.py's: only a run passes them on
    (["list", "--epochs", "2"], "--epochs 2"),
])
def test_a_flag_that_list_report_or_status_does_not_take_is_refused_not_ignored(argv, named, tmp_path, capsys,
                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_activation_runs(tmp_path, [("relu", [0.5])])  # a study under ./runs, whose report is not built
    assert studies_main(argv) == 2
    said = capsys.readouterr().err
    assert said == f"error: unrecognized arguments: {named}; see python -m studies {argv[0]} --help\n"
    assert not os.path.exists(tmp_path / "runs" / "report") and not os.path.exists(tmp_path / "elsewhere")


@pytest.mark.parametrize("flags", [[], ["--set", "num_classes=10"]], ids=["model_config", "set"])
def test_run_all_refuses_one_model_config_for_studies_of_three_models(flags, study_args, tmp_path, capsys):
    argv = study_args("mlp_activation", *flags)
    argv[1] = "all"
    if flags:  # --set alone
        position = argv.index("--model_config")
        del argv[position:position + 2]
    assert studies_main(argv) == 2
    assert ("error: --model_config and --set apply to one model, and the studies train mlp, mlpmixer, resnet18; "
            "run the studies one by one") in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("flags", [["--values", "relu"], ["--trials", "3"]])
def test_run_all_refuses_the_flags_of_one_studys_grid_or_search(flags, study_args, tmp_path, capsys):
    argv = study_args("mlp_activation", *flags)
    argv[1] = "all"
    position = argv.index("--model_config")
    del argv[position:position + 2]
    assert studies_main(argv) == 2
    assert capsys.readouterr().err == "error: --values and --trials apply to one study; run the studies one by one\n"
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("flags, message", [
    (["--seed", "4294967295"], "--seeds 1 from --seed 4294967295 reaches seed 4294967296 in resnet18_best"),
    (["--lr", "0.01"], "resnet18_lr varies lr; choose its values with --values, not --lr"),  # mlp_activation takes it
    (["--optimizer", "sgd"], "resnet18_lr holds optimizer at 'adam' (the question it answers); remove --optimizer"),
])
def test_run_all_checks_every_studys_flags_before_the_first_starts(flags, message, study_args, tmp_path, capsys,
                                                                   monkeypatch):
    data_reads = []  # nor is the data read for a launch whose flags a later study refuses
    monkeypatch.setattr(studies_cli, "load_cifar10", lambda *args: data_reads.append(args) or load_cifar10(*args))
    argv = study_args("mlp_activation", *flags)
    argv[1] = "all"
    position = argv.index("--model_config")
    del argv[position:position + 2]
    assert studies_main(argv) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out") and data_reads == []


def test_run_all_refuses_a_later_study_made_with_other_flags_before_the_first_trains(study_args, tmp_path, capsys):
    assert studies_main(study_args("mlpmixer_patch", "--values", "8")) == 0
    argv = study_args("mlp_activation", epochs=2)
    argv[1] = "all"
    position = argv.index("--model_config")
    del argv[position:position + 2]
    capsys.readouterr()
    assert studies_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: study mlpmixer_patch in {tmp_path / 'out' / 'mlpmixer_patch'} was started with "
                          "other flags (epochs 1, now 2; ") and err.count("\n") == 1
    assert not os.path.exists(tmp_path / "out" / "mlp_activation" / "runs")


def test_the_largest_seeds_numpy_takes_train_without_a_warning(study_args, tmp_path):
    import warnings

    argv = study_args("mlp_activation", "--values", "relu", "--seed", "4294967294", "--seeds", "2")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert studies_main(argv) == 0
    assert [str(warning.message) for warning in caught] == []
    seeds = sorted(trial.params["seed"] for trial in load_study(str(tmp_path / "out"), "mlp_activation").get_trials())
    assert seeds == [4294967294, 4294967295]
    assert sorted(os.listdir(tmp_path / "out" / "mlp_activation" / "runs")) == [
        "activation-relu_seed-4294967294", "activation-relu_seed-4294967295"]


def test_values_may_be_separated_by_commas_as_well_as_spaces(study_args, tmp_path):
    assert studies_main(study_args("mlp_activation", "--values", "sigmoid,relu", "tanh,")) == 0
    assert sorted(os.listdir(tmp_path / "out" / "mlp_activation" / "runs")) == [
        "activation-relu_seed-42", "activation-sigmoid_seed-42", "activation-tanh_seed-42"]


def test_list_names_every_study_with_its_grid_or_search_space(capsys):
    assert studies_main(["list"]) == 0
    out = capsys.readouterr().out
    assert "mlpmixer_patch (mlpmixer): " in out and ("  grid: patch_size in 2, 4, 8, 16 (--values: any of 1, 2, 4, "
                                                   "8, 16, 32; Problem 4 asks for at least 3)\n") in out
    assert "  grid: activation in relu, tanh, sigmoid\n" in out
    assert "  fixed: optimizer=adam" in out and "  grid: lr in 0.1, 0.01, 0.001, 0.0001, 1e-05" in out
    assert re.search(r"^resnet18_best \(resnet18\): .*\n  search: 24 trials \(--trials N; fewer when "
                     r"--search_minutes M runs out\) over the settings below, then the best configuration retrained "
                     r"and tested once per seed \(--seeds N\)\n(  \w+: .+\n)*  augment: ", out, re.MULTILINE)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_model_config_from_a_pipe_is_refused_for_several_workers_which_each_read_it(study_args, tiny_configs,
                                                                                       tmp_path, capsys, monkeypatch):
    def launch_workers(*args):  # they would wait for a writer to the pipe forever
        raise AssertionError("workers launched")
    monkeypatch.setattr(studies_cli, "launch_workers", launch_workers)
    pipe = tmp_path / "pipe"  # what bash's process substitution passes: --model_config <(cat mlp.json)
    os.mkfifo(pipe)
    writer = threading.Thread(target=pipe.write_text, args=(pathlib.Path(tiny_configs["mlp"]).read_text(),))
    writer.start()
    argv = study_args("mlp_activation", "--workers", "2")
    argv[argv.index("--model_config") + 1] = str(pipe)
    try:
        assert studies_main(argv) == 2
    finally:
        writer.join(timeout=10)
        if writer.is_alive():  # refused unread
            pipe.read_text()
            writer.join()
    assert capsys.readouterr().err == (f"error: --model_config {pipe} is not a file (a pipe, as <(...) makes, is read "
                                       "once), and each of the 2 workers reads it; save it to a file and pass that\n")
    assert not os.path.exists(tmp_path / "out")


def test_held_model_settings_are_checked_before_anything_is_written(study_args, tmp_path, capsys):
    assert studies_main(study_args("mlpmixer_best", "--set", "embed_dim=-3")) == 2
    assert "--set: key 'embed_dim' must be a positive integer, got -3" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")


def test_missing_data_is_refused_before_anything_is_written(study_args, tmp_path, monkeypatch, capsys):
    import urllib.error
    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(tv_utils, "download_url", offline)
    assert studies_main(study_args("mlp_activation", "--data_dir", str(tmp_path / "no_data"))) == 2
    assert "download failed" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out") and not os.path.exists(tmp_path / "no_data")


@pytest.mark.parametrize("command", ["run", "report", "status"])
def test_an_out_that_is_a_file_is_refused(command, study_args, tmp_path, capsys):
    argv = study_args("mlp_activation") if command == "run" else [command, "--out", "OUT"]
    argv[argv.index("--out") + 1] = str(tmp_path / "taken")
    (tmp_path / "taken").write_text("")
    assert studies_main(argv) == 2
    assert capsys.readouterr().err == (f"error: --out {tmp_path / 'taken'} is a file, not a folder; give the folder "
                                       "of the studies\n")
    assert os.listdir(tmp_path) == ["taken"]


@pytest.mark.parametrize("name, device, cuda, noted", [
    ("resnet18_lr", "cpu", True, True), ("mlpmixer_patch", "cuda", False, True), ("resnet18_best", "cuda", True, False),
    ("mlp_activation", "cpu", False, False)])
def test_a_resnet_or_mixer_study_on_a_cpu_says_first_what_an_epoch_costs_there(name, device, cuda, noted, capsys,
                                                                               monkeypatch):
    from config import get_config_parser
    from studies.__main__ import AMX_CPU_EPOCH_SECONDS, CPU_EPOCH_SECONDS, STUDIES, _note_cpu_cost

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    _note_cpu_cost(STUDIES[name], get_config_parser().parse_args(["--device", device]))
    err = capsys.readouterr().err
    seconds = CPU_EPOCH_SECONDS.get(STUDIES[name].model)
    fp32, bf16 = AMX_CPU_EPOCH_SECONDS.get(STUDIES[name].model, (None, None))
    assert (f"one training epoch of the full data took {seconds} s on this project's first 2-core machine, and an "
            f"epoch {fp32} s on a later one with AMX ({bf16} s with --precision bf16; " in err) == noted
    assert ("only mlp_activation is practical" in err) == noted


@pytest.mark.parametrize("name, values, noted", [("resnet18_lr", "0.001", True), ("mlp_activation", "relu", False)])
def test_a_study_launched_on_a_cpu_prints_the_cost_note(name, values, noted, study_args, monkeypatch, capsys):
    import studies.__main__ as cli

    monkeypatch.setattr(cli, "work", lambda plan, study, lock: None)  # the runs themselves are not needed
    assert cli.main(study_args(name, "--values", values)) == 0
    assert (f"note: {name} trains" in capsys.readouterr().err) == noted


@pytest.mark.parametrize("flags, cuda, noted", [([], False, True), (["--device", "cpu"], False, False),
                                               ([], True, False)])
def test_a_study_asked_for_cuda_where_there_is_none_says_that_its_runs_train_on_the_cpu(flags, cuda, noted, study_args,
                                                                                     monkeypatch, capsys):
    import studies.__main__ as cli

    monkeypatch.setattr(cli, "work", lambda plan, study, lock: None)  # the runs themselves are not needed
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(cli, "no_cuda_said", lambda: "CUDA is not available, and why")
    monkeypatch.setattr(cli, "_note_precision", lambda study, args: None)  # it would ask the GPU stood in for
    argv = study_args("mlp_activation")
    del argv[argv.index("--device"):argv.index("--device") + 2]  # to the default, cuda
    assert cli.main([*argv, *flags]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "CUDA" in line]
    assert notes == (["note: CUDA is not available, and why: the runs of mlp_activation train on the CPU"]
                     if noted else [])


@pytest.mark.parametrize("flags, cpu_bf16, note", [
    ([], True, "note: the runs of mlp_activation train in fp32 (this CPU has bf16 arithmetic: --precision bf16 may "
               "train faster)\n"),
    ([], False, None),
    (["--precision", "bf16"], True, None),  # already asked for
])
def test_a_study_on_a_cpu_with_bf16_arithmetic_passes_on_the_runs_precision_hint(flags, cpu_bf16, note, study_args,
                                                                                 monkeypatch, capsys):
    import studies.__main__ as cli
    from training import devices

    monkeypatch.setattr(cli, "work", lambda plan, study, lock: None)  # the runs themselves are not needed
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: cpu_bf16)
    assert cli.main(study_args("mlp_activation", *flags)) == 0
    notes = [line + "\n" for line in capsys.readouterr().err.splitlines() if "precision" in line]
    assert notes == ([note] if note else [])


@pytest.mark.parametrize("capability, precision, device, note", [
    ((7, 5), "auto", "cuda", " in fp32 (this GPU's tensor cores compute in fp16: --precision fp16 may train faster)"),
    ((7, 5), "fp16", "cuda", None),
    ((9, 0), "auto", "cuda", None),  # bf16
    ((9, 0), "fp32", "cuda", None),  # asked for
    ((7, 5), "auto", "cpu", None),  # the GPU unused
    (None, "auto", "cuda", None),  # no GPU: the runs fall back to the CPU
])
def test_a_study_on_a_gpu_with_fp16_tensor_cores_passes_on_the_runs_precision_hint(capability, precision, device,
                                                                                   note, monkeypatch, capsys):
    from config import get_config_parser
    from studies.__main__ import _note_precision
    from studies.definitions import STUDIES
    from training import devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: capability is not None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: False)
    _note_precision(STUDIES["resnet18_lr"], get_config_parser().parse_args(["--precision", precision,
                                                                            "--device", device]))
    assert capsys.readouterr().err == (f"note: the runs of resnet18_lr train{note}\n" if note else "")


@pytest.mark.parametrize("name, flags, noted", [
    ("resnet18_lr", ["--weight_decay", "1e-4"], ["warning: in resnet18_lr, --weight_decay 0.0001 is not used with "
                                                 "--optimizer adam: the template's adam has no weight decay (adamw "
                                                 "decays the weights)"]),
    ("resnet18_best", ["--momentum", "0.8"], []),  # the search tunes the optimizer: its SGD trials read it
    ("resnet18_best", ["--optimizer", "adamw", "--momentum", "0.8"],
     ["warning: in resnet18_best, --momentum 0.8 is not used with --optimizer adamw: only --optimizer momentum has "
      "momentum"]),
    ("mlp_activation", ["--warmup_fraction", "0.1"], ["warning: in mlp_activation, --warmup_fraction 0.1 is not used "
                                                      "with --lr_schedule constant: only cosine and onecycle warm up"]),
])
def test_a_study_warns_once_of_a_flag_that_its_runs_train_without(name, flags, noted, study_args, monkeypatch, capsys):
    import studies.__main__ as cli

    monkeypatch.setattr(cli, "work", lambda plan, study, lock: None)  # each run's train.log warns as main.py does
    assert cli.main(study_args(name, *flags)) == 0
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: in")] == noted


def test_the_cpu_epoch_costs_the_studies_quote_are_those_measured_in_docs_cpu():
    from studies.__main__ import AMX_CPU_EPOCH_SECONDS, CPU_EPOCH_SECONDS

    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "cpu.md")) as f:
        measured = " ".join(f.read().split())
    assert (f"One training epoch took {CPU_EPOCH_SECONDS['mlpmixer']} s there for the default MLP-Mixer and "
            f"{CPU_EPOCH_SECONDS['resnet18']} s for ResNet18") in measured
    mixer, resnet = AMX_CPU_EPOCH_SECONDS["mlpmixer"], AMX_CPU_EPOCH_SECONDS["resnet18"]
    assert (f"One epoch (training and validation) of the MLP-Mixer took {mixer[0]} s there in fp32 and {mixer[1]} s "
            f"in bf16, and of ResNet18 {resnet[0]} s and {resnet[1]} s") in measured

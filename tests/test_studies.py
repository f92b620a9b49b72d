"""Problem 4's studies on tiny fake data: grids end to end, how a run is ranked, and failures recorded. Searches are
in test_study_search.py, what the commands show in test_study_commands.py and test_study_status.py, interrupted
studies in test_study_interruptions.py, runs whose worker was declared lost in test_study_lost_runs.py, reruns in
test_study_reruns.py."""
import os
import re
import sys

import pytest
from optuna.trial import TrialState

from helpers import jobs_of, load_study, read_json, script_validation_accuracies
from studies import worker as study_worker
from studies.__main__ import main as studies_main
from studies.report import load_runs
from studies.sections import outcome_sentences


def test_grid_study_runs_every_point_once_and_a_rerun_trains_nothing(study_args, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert studies_main(study_args("mlp_activation", "--seeds", "2")) == 0
    study = load_study(out, "mlp_activation")
    expected = {f"activation-{a}_seed-{s}" for a in ("relu", "tanh", "sigmoid") for s in (42, 43)}
    assert jobs_of(study) == {job: [TrialState.COMPLETE] for job in expected}
    for job in expected:
        folder = os.path.join(out, "mlp_activation", "runs", job)
        results, trial = read_json(os.path.join(folder, "results.json")), read_json(os.path.join(folder, "trial.json"))
        activation, seed = job[len("activation-"):].split("_seed-")
        assert results["model_config"]["activation"] == activation and results["seed"] == int(seed)
        assert results["status"] == "completed" and results["test_acc"] is not None
        assert trial["outcome"] == "completed" and trial["value"] == results["valid_accs"][-1]
        assert not os.path.exists(os.path.join(folder, "checkpoint.pt"))  # finished runs keep no checkpoint
        with open(os.path.join(folder, "train.log")) as f:
            assert "%|" not in f.read()  # no progress bar: a log that `tail -f` follows gets whole lines
    printed = capsys.readouterr().out  # a progress line per epoch on the console; the rest is in train.log
    for job in expected:
        results = read_json(os.path.join(out, "mlp_activation", "runs", job, "results.json"))
        seconds = results["train_seconds"][0] + results["valid_seconds"][0]  # the epoch's training and validation
        assert (f"\n  {job}: epoch 1/1, train loss {results['train_losses'][0]:.4f}, valid acc "
                f"{results['valid_accs'][0]:.4f}, {seconds:.1f} s\n") in printed, printed
    assert studies_main(study_args("mlp_activation", "--seeds", "2")) == 0
    assert "-> " not in capsys.readouterr().out  # nothing trained again
    assert len(load_study(out, "mlp_activation").get_trials()) == 6


def test_grid_values_and_seeds_extend_a_finished_study(study_args, tmp_path):
    out = str(tmp_path / "out")
    assert studies_main(study_args("mlp_activation", "--values", "relu")) == 0
    assert studies_main(study_args("mlp_activation", "--values", "relu", "tanh", "--seeds", "2")) == 0
    assert set(jobs_of(load_study(out, "mlp_activation"))) == {
        "activation-relu_seed-42", "activation-relu_seed-43", "activation-tanh_seed-42", "activation-tanh_seed-43"}


def test_a_run_is_ranked_by_its_last_validation_accuracy_not_its_best(study_args, tmp_path, monkeypatch):
    script_validation_accuracies(monkeypatch, [0.5, 0.7, 0.6])
    assert studies_main(study_args("mlp_activation", "--values", "relu", epochs=3)) == 0
    [trial] = load_study(str(tmp_path / "out"), "mlp_activation").get_trials()
    assert trial.value == 0.6


def test_diverged_and_failed_runs_are_recorded_and_the_study_goes_on(study_args, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "out")
    assert studies_main(study_args("mlp_activation", "--values", "relu", "--optimizer", "sgd", "--lr", "1e30")) == 0
    [trial] = load_study(out, "mlp_activation").get_trials()
    assert trial.state == TrialState.FAIL and trial.user_attrs["outcome"] == "diverged"
    assert re.fullmatch(r"the (training|validation) loss was (nan|inf) (in|after) epoch 1", trial.user_attrs["error"])

    real_fit = study_worker.fit

    def fit_failing_for_tanh(args, **kwargs):
        if "tanh" in args.logdir:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_fit(args, **kwargs)
    monkeypatch.setattr(study_worker, "fit", fit_failing_for_tanh)
    failing_out = ["--out", str(tmp_path / "other")]
    capsys.readouterr()
    assert studies_main(study_args("mlp_activation", "--values", "tanh", "sigmoid", *failing_out)) == 0
    ends = re.findall(r"^trial \d+: .*$", capsys.readouterr().out, re.MULTILINE)
    patterns = [r"trial \d+: error \(RuntimeError: CUDA out of memory \(simulated\)\)",
                r"trial \d+: completed, final validation accuracy \d\.\d{4}"]
    assert len(ends) == 2 and all(any(re.fullmatch(pattern, end) for end in ends) for pattern in patterns), ends
    states = {t.user_attrs["run_dir"]: (t.state, t.user_attrs["outcome"])
              for t in load_study(str(tmp_path / "other"), "mlp_activation").get_trials()}
    assert states == {"activation-tanh_seed-42": (TrialState.FAIL, "error"),
                      "activation-sigmoid_seed-42": (TrialState.COMPLETE, "completed")}
    failed_dir = tmp_path / "other" / "mlp_activation" / "runs" / "activation-tanh_seed-42"
    failed = read_json(failed_dir / "trial.json")
    assert (failed["outcome"], failed["error"]) == ("error", "RuntimeError: CUDA out of memory (simulated)")
    log = (failed_dir / "train.log").read_text()  # the traceback, for whoever looks into the failure
    assert "Traceback (most recent call last):" in log and "in fit_failing_for_tanh" in log
    assert studies_main(study_args("mlp_activation", "--values", "tanh", "sigmoid", *failing_out)) == 0
    assert len(load_study(str(tmp_path / "other"), "mlp_activation").get_trials()) == 2  # errors stay recorded
    monkeypatch.setattr(study_worker, "fit", real_fit)
    assert studies_main(study_args("mlp_activation", "--values", "tanh", "sigmoid", *failing_out,
                                   "--retry_failed")) == 0
    trials = load_study(str(tmp_path / "other"), "mlp_activation").get_trials()
    assert [t.state for t in trials if t.user_attrs["run_dir"] == "activation-tanh_seed-42"] == [
        TrialState.FAIL, TrialState.COMPLETE]


def test_a_run_that_raises_an_os_error_other_than_a_full_disk_is_its_own_failure(study_args, tmp_path, monkeypatch,
                                                                                   capsys):
    """A full disk stops the study, since every run after it would fail too; any other OSError (a file of the run's
    own that went missing, a read error) fails that run alone, and the study goes on."""
    import errno

    real_fit = study_worker.fit

    def fit_failing_for_tanh(args, **kwargs):
        if "tanh" in args.logdir:
            raise OSError(errno.EIO, "Input/output error")
        return real_fit(args, **kwargs)
    monkeypatch.setattr(study_worker, "fit", fit_failing_for_tanh)
    assert studies_main(study_args("mlp_activation", "--values", "tanh", "sigmoid")) == 0
    states = {t.user_attrs["run_dir"]: (t.state, t.user_attrs["outcome"], t.user_attrs.get("error"))
              for t in load_study(str(tmp_path / "out"), "mlp_activation").get_trials()}
    assert states == {"activation-tanh_seed-42": (TrialState.FAIL, "error", "OSError: [Errno 5] Input/output error"),
                      "activation-sigmoid_seed-42": (TrialState.COMPLETE, "completed", None)}


def test_a_run_that_retry_failed_trains_again_is_unfinished_in_the_report_until_it_ends(study_args, tmp_path,
                                                                                         monkeypatch):
    study_dir, name = str(tmp_path / "out" / "mlp_activation"), "activation-relu_seed-42"

    def failing(args, **kwargs):
        raise RuntimeError("simulated")
    monkeypatch.setattr(study_worker, "fit", failing)
    assert studies_main(study_args("mlp_activation", "--values", "relu")) == 0
    assert outcome_sentences(load_runs(study_dir)) == [f"{name} failed: RuntimeError: simulated."]
    during_retry = []

    def retrying(args, **kwargs):
        during_retry.extend(outcome_sentences(load_runs(study_dir)))
        return {"status": "completed", "valid_accs": [0.3]}
    monkeypatch.setattr(study_worker, "fit", retrying)
    assert studies_main(study_args("mlp_activation", "--values", "relu", "--retry_failed")) == 0
    assert during_retry == [f"{name} has not finished (0 epochs logged); rerun the study to complete it."]
    assert read_json(os.path.join(study_dir, "runs", name, "trial.json"))["outcome"] == "completed"


@pytest.mark.parametrize("status, valid_accs, error, recorded", [
    ("completed", [], None, (TrialState.FAIL, "error", None, "no validation accuracy was recorded")),
    ("diverged", [0.3], "the validation loss was nan after epoch 2",  # an accuracy logged before it diverged
     (TrialState.FAIL, "diverged", None, "the validation loss was nan after epoch 2")),
    ("completed", [0.3, 0.4], None, (TrialState.COMPLETE, "completed", 0.4, None))])
def test_a_run_has_a_value_only_when_it_completed_with_a_validation_accuracy(status, valid_accs, error, recorded,
                                                                             study_args, tmp_path, monkeypatch):
    monkeypatch.setattr(study_worker, "fit",
                        lambda args, **kwargs: {"status": status, "valid_accs": valid_accs, "error": error})
    assert studies_main(study_args("mlp_activation", "--values", "relu")) == 0
    [trial] = load_study(str(tmp_path / "out"), "mlp_activation").get_trials()
    logged = read_json(tmp_path / "out" / "mlp_activation" / "runs" / "activation-relu_seed-42" / "trial.json")
    assert (trial.state, trial.user_attrs["outcome"], trial.value, trial.user_attrs.get("error")) == recorded
    assert (logged["outcome"], logged["value"], logged["error"]) == recorded[1:]



@pytest.mark.skipif(sys.platform != "linux", reason="Linux alone lets a file name hold a byte that is not UTF-8")
def test_a_study_folder_whose_name_is_not_utf8_gets_its_runs_logs_and_report(study_args, tmp_path):
    """The final run's log says where it wrote its visualisation, and the report names --out: both as an escape, as
    on the standard error (they failed the run, and the report, with a UnicodeEncodeError)."""
    out = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9")  # Latin-1, as an older disk or share names it
    argv = study_args("mlpmixer_best", "--trials", "1")
    argv[argv.index("--out") + 1] = out
    assert studies_main(argv) == 0
    final = os.path.join(out, "mlpmixer_best", "runs", "final_seed-43")
    assert read_json(os.path.join(final, "trial.json"))["outcome"] == "completed"
    shown = out.encode("utf-8", "backslashreplace").decode("utf-8")
    with open(os.path.join(final, "train.log"), encoding="utf-8") as f:
        assert f"wrote {shown}/mlpmixer_best/runs/final_seed-43/mlpmixer_token_mixing.png" in f.read().splitlines()
    assert studies_main(["report", "--out", out]) == 0
    with open(os.path.join(out, "report", "report.md"), encoding="utf-8") as f:
        assert f"no runs under {shown} yet" in f.read()

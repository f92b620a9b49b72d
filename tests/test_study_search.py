"""The searches of Problem 4 on tiny fake data: a search runs its budget, retrains and tests its best trial once;
its pruner, its sampler's draws (the same when run again or resumed), and which trial is the best."""
import csv
import json
import os
import re

import optuna
from optuna.trial import TrialState

from helpers import load_study, minutes_pass_per_validation, read_json, script_validation_accuracies
from studies import search as study_search
from studies import plan as study_plan
from studies import worker as study_worker
from studies.__main__ import main as studies_main


def test_search_runs_its_budget_then_retrains_and_tests_the_best(study_args, tmp_path, capsys):
    out = str(tmp_path / "out")
    argv = study_args("mlpmixer_best", "--trials", "3", "--set", "embed_dim=16", "--set", "num_blocks=1")
    assert studies_main(argv) == 0
    output = capsys.readouterr().out
    assert output.endswith("study mlpmixer_best: search trials: 3 completed (of 3); final runs: 1 completed\n")
    assert re.findall(r"^study mlpmixer_best: (search trials.*)\ntrial", output, re.MULTILINE) == [
        "search trials: 1 running (of 3)", "search trials: 1 completed, 1 running (of 3)",
        "search trials: 2 completed, 1 running (of 3)", "search trials: 3 completed (of 3); final runs: 1 running"]
    study = load_study(out, "mlpmixer_best")
    trials = study.get_trials()
    search = [t for t in trials if t.user_attrs["role"] == "search"]
    final = [t for t in trials if t.user_attrs["role"] == "final"]
    assert len(search) == 3 and len(final) == 1
    best = max((t for t in search if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert final[0].user_attrs["source_trial"] == best.number
    assert final[0].user_attrs["settings"] == best.user_attrs["settings"]
    runs = os.path.join(out, "mlpmixer_best", "runs")
    for trial in search:
        results = read_json(os.path.join(runs, trial.user_attrs["run_dir"], "results.json"))
        assert results["test_acc"] is None and results["test_confusion"] is None  # no search trial sees the test set
        assert results["seed"] == 42
        assert results["model_config"]["patch_size"] == 4 and results["model_config"]["embed_dim"] == 16
    final_dir = os.path.join(runs, "final_seed-43")  # a fresh seed: with the trials' 42 it would repeat the best
    final_results = read_json(os.path.join(final_dir, "results.json"))
    assert final_results["test_acc"] is not None and final_results["test_confusion"] and final_results["seed"] == 43
    for setting, value in best.user_attrs["settings"].items():  # the best trial's settings, each of them
        assert final_results["model_config" if setting in ("embed_dim", "num_blocks", "drop_rate", "patch_size")
                             else "args"][setting] == value, setting
    assert {"checkpoint.pt", "mlpmixer_token_mixing.png"} <= set(os.listdir(final_dir))
    assert studies_main(argv) == 0 and len(load_study(out, "mlpmixer_best").get_trials()) == 4
    capsys.readouterr()
    assert studies_main(["report", "--out", out]) == 0
    report_dir = os.path.join(out, "report")
    assert capsys.readouterr().out.splitlines() == [f"wrote {report_dir}/{name}" for name in
                                                    ("report.md", "report.pdf", "runs.csv", "epochs.csv")]
    with open(os.path.join(report_dir, "runs.csv"), newline="") as f:
        rows = {row["run"]: row for row in csv.DictReader(f)}
    assert set(rows) == set(os.listdir(runs))  # the trials and the final run, with what their results.json logged
    assert float(rows["final_seed-43"]["test_acc"]) == final_results["test_acc"]
    assert rows["final_seed-43"]["optimizer"] == final_results["args"]["optimizer"]
    assert rows["final_seed-43"]["model.embed_dim"] == "16" and rows["final_seed-43"]["role"] == "final"
    with open(os.path.join(out, "report", "report.md")) as f:
        text = f.read()
    assert "Unreadable" not in text  # every value that the runs wrote has the shape that the report reads
    for setting, value in (("epochs", 1), ("embed_dim", 16), ("num_blocks", 1)):  # --epochs 1 and the --set keys
        assert f"| {setting} | - | held at {value} by the launch's flags |" in text
    assert "| mix | mix | one of none, mixup, cutmix |" in text
    for key in ("augment", "mix", "tta"):  # in the final runs' full hyperparameters
        assert re.search(rf"^\| {key} \| {final_results['args'][key]} \|$", text, re.MULTILINE)


def test_a_search_out_of_minutes_draws_no_new_trial_then_retrains_its_best_and_a_rerun_carries_it_on(
        study_args, tmp_path, monkeypatch, capsys):
    minutes_pass_per_validation(monkeypatch)  # a trial starts at minute 0, 1, 2: at 3 the 2.5 minutes are spent
    out, argv = str(tmp_path / "out"), study_args("mlpmixer_best", "--trials", "5", "--set", "embed_dim=16",
                                                  "--set", "num_blocks=1")
    assert studies_main([*argv, "--search_minutes", "2.5"]) == 0
    output = capsys.readouterr().out
    assert ("study mlpmixer_best: --search_minutes 2.5 is spent after 3 trials: no new trial is drawn; those under way "
            "train to their end, then the best one's final runs\n") in output
    assert output.endswith("study mlpmixer_best: search trials: 3 completed (of 5); final runs: 1 completed; this "
                           "launch's --search_minutes 2.5 ended the search after 3 trials (a rerun carries it on)\n")
    roles = [trial.user_attrs["role"] for trial in load_study(out, "mlpmixer_best").get_trials()]
    assert roles == ["search"] * 3 + ["final"]
    assert studies_main(argv) == 0  # without a time budget: the search goes on to its 5 trials
    trials = load_study(out, "mlpmixer_best").get_trials()
    assert sum(trial.user_attrs["role"] == "search" for trial in trials) == 5
    assert capsys.readouterr().out.endswith("final runs: 1 completed\n")


def test_a_search_whose_minutes_are_spent_before_its_first_trial_still_trains_one_and_retrains_it(
        study_args, tmp_path, monkeypatch, capsys):
    minutes_pass_per_validation(monkeypatch, clock_at_claims=600.0)
    out = str(tmp_path / "out")
    argv = study_args("mlpmixer_best", "--set", "embed_dim=16", "--set", "num_blocks=1", "--search_minutes", "1")
    assert studies_main(argv) == 0
    assert "--search_minutes 1 is spent after 1 trial: no new trial" in capsys.readouterr().out
    trials = load_study(out, "mlpmixer_best").get_trials()
    assert [trial.user_attrs["role"] for trial in trials] == ["search", "final"]
    assert trials[1].user_attrs["source_trial"] == 0


def test_a_search_extended_past_a_better_trial_retrains_that_one_and_reports_only_its_final_runs(
        study_args, tmp_path, monkeypatch, capsys):
    # the validation accuracy of each run's one epoch, in the order the runs train
    script_validation_accuracies(monkeypatch, [0.5, 0.6, 0.55,  # trials 0 and 1, then trial 1's final run
                                               0.9, 0.85])  # trial 3, better, then its final run
    out, tiny = str(tmp_path / "out"), ["--set", "embed_dim=16", "--set", "num_blocks=1"]
    assert studies_main(study_args("mlpmixer_best", "--trials", "2", *tiny)) == 0
    assert capsys.readouterr().out.endswith("study mlpmixer_best: search trials: 2 completed (of 2); final runs: 1 "
                                            "completed\n")
    assert studies_main(study_args("mlpmixer_best", "--trials", "3", *tiny)) == 0
    trials = {t.user_attrs["run_dir"]: t for t in load_study(out, "mlpmixer_best").get_trials()}
    assert sorted(trials) == ["final_seed-43", "final_seed-43_trial-0003", "trial-0000", "trial-0001", "trial-0003"]
    assert [trials[name].user_attrs["source_trial"] for name in ("final_seed-43", "final_seed-43_trial-0003")] == [1, 3]
    retrained = read_json(os.path.join(out, "mlpmixer_best", "runs", "final_seed-43_trial-0003", "results.json"))
    assert retrained["args"]["lr"] == trials["trial-0003"].user_attrs["settings"]["lr"]
    capsys.readouterr()
    for trials in ("3", "2"):  # nothing left to train; a smaller budget takes nothing back
        assert studies_main(study_args("mlpmixer_best", "--trials", trials, *tiny)) == 0
        assert len(load_study(out, "mlpmixer_best").get_trials()) == 5
        assert capsys.readouterr().out.endswith("study mlpmixer_best: search trials: 3 completed (of 3); final runs: "
                                                "1 completed; final runs of an earlier best: 1 completed\n")
    assert studies_main(["report", "--out", out]) == 0
    with open(os.path.join(out, "report", "report.md")) as f:
        text = f.read()
    assert "Best trial: 3, final validation accuracy 0.9000" in text
    assert "Final validation accuracy of the retrained runs: 0.8500, against 0.9000 for trial 3" in text
    assert ("Not counted: the final run final_seed-43, which retrained trial 1, the best trial before later trials "
            "beat it.") in text
    assert "| final_seed-43 |" not in text and "| final_seed-43_trial-0003 | completed |" in text


def test_an_interrupted_final_run_of_a_trial_no_longer_the_best_is_not_resumed(tmp_path):
    from studies.scheduler import Claimer
    from studies.storage import FileLock

    study, lock = optuna.create_study(direction="maximize"), FileLock(str(tmp_path / "claims.lock"))
    claimer = Claimer(study, lock, search_trials=2, final_seeds=[43])
    for value in (0.5, 0.6):
        trial = claimer.claim()
        trial.set_user_attr("settings", {"lr": value})
        study.tell(trial, value)
    final = claimer.claim()
    assert (final.user_attrs["run_dir"], final.user_attrs["source_trial"]) == ("final_seed-43", 1)
    study.tell(final, state=TrialState.FAIL)  # interrupted (no outcome): its job would resume
    better = study.ask()  # meanwhile, another worker of the search extended to 3 trials found a better one
    for key, value in {"role": "search", "run_dir": "trial-0003", "settings": {"lr": 0.9}}.items():
        better.set_user_attr(key, value)
    study.tell(better, 0.9)
    claimed = Claimer(study, lock, search_trials=3, final_seeds=[43]).claim()
    assert (claimed.user_attrs["run_dir"], claimed.user_attrs["source_trial"]) == ("final_seed-43_trial-0003", 3)
    assert claimed.user_attrs["settings"] == {"lr": 0.9}
    assert not study.get_trials(states=(TrialState.WAITING,))  # final_seed-43 is not enqueued again


def test_search_trials_are_pruned_on_validation_accuracy(study_args, tmp_path, monkeypatch):
    reported = []

    def always_prune(self, study, trial):
        reported.append(trial.number)
        return True
    monkeypatch.setattr(study_search.SameBudgetMedianPruner, "prune", always_prune)
    out = str(tmp_path / "out")
    assert studies_main(study_args("mlpmixer_best", "--trials", "2", "--set", "embed_dim=16", "--set",
                                   "num_blocks=1", epochs=3)) == 0
    trials = load_study(out, "mlpmixer_best").get_trials()
    search = [t for t in trials if t.user_attrs["role"] == "search"]
    assert [t.state for t in search] == [TrialState.PRUNED] * 2 and reported
    assert all(t.intermediate_values == {1: t.intermediate_values[1]} for t in search)
    assert not any(t.user_attrs["role"] == "final" for t in trials)  # nothing completed: no best to retrain


def test_the_search_pruner_compares_a_trial_from_epoch_4_with_completed_trials_of_its_epoch_budget():
    def verdicts(completed, trial_accuracies=(0.5,) * 6):
        """Whether a 40-epoch trial with ``trial_accuracies`` in epochs 1 to 6 is pruned after each of them,
        beside ``completed``: (epoch budget, accuracy in every epoch) of each completed trial."""
        study = optuna.create_study(direction="maximize", pruner=study_search.SameBudgetMedianPruner())
        for budget, accuracy in completed:
            peer = study.ask()
            peer.set_user_attr("settings", {"epochs": budget, "lr": 0.1})
            for epoch in range(1, 7):
                peer.report(accuracy, epoch)
            study.tell(peer, accuracy)
        trial, pruned = study.ask(), []
        trial.set_user_attr("settings", {"epochs": 40, "lr": 0.2})
        for epoch, accuracy in enumerate(trial_accuracies, start=1):
            trial.report(accuracy, epoch)
            pruned.append(trial.should_prune())
        return pruned

    # as docs/studies.md says: from epoch 4, after 5 completed trials, among at least 2 with its epochs
    assert (study_search.PRUNE_FROM_EPOCH, study_search.PRUNE_AFTER_TRIALS, study_search.PRUNE_PEERS) == (4, 5, 2)
    # its best so far, not its latest: a trial at 0.95 by epoch 3 that dips to 0.5 stays beside peers at 0.9
    assert verdicts([(40, 0.9)] * 5, trial_accuracies=[0.95] * 3 + [0.5] * 3) == [False] * 6
    assert verdicts([(40, 0.9)] * 5) == [False] * 3 + [True] * 3
    assert verdicts([(40, 0.9)] * 4) == [False] * 6  # too few completed trials
    assert verdicts([(10, 0.9)] * 5) == [False] * 6  # better trials, but of another budget
    assert verdicts([(10, 0.9)] * 4 + [(40, 0.9)]) == [False] * 6  # one peer is too few
    assert verdicts([(10, 0.9)] * 3 + [(40, 0.9), (40, 0.4)]) == [False] * 3 + [True] * 3  # median 0.65
    assert verdicts([(10, 0.9)] * 3 + [(40, 0.3), (40, 0.4)]) == [False] * 6  # above its peers' median
    assert verdicts([(10, 0.9)] * 3 + [(40, 0.5), (40, 0.5)]) == [False] * 6  # at the median, as Optuna's keeps


def test_a_search_draws_the_same_trials_when_run_again_and_when_resumed(tmp_path):
    from studies.definitions import STUDIES
    from studies.scheduler import Claimer
    from studies.storage import open_storage

    def search(folder, seed, launches, killed_mid_run=False, study_name="resnet18_best"):
        """The settings of the completed trials of a search of 12 (past TPE's 8 random ones) over ``launches``
        launches (budgets), in this process as a notebook would relaunch; each trial's value is a function of its
        settings. ``killed_mid_run``: the first launch's last trial stops mid-run, as a killed worker's does."""
        drawn = []
        for launch, trials in enumerate(launches):
            storage, lock = open_storage(None, str(tmp_path / folder))
            plan = study_plan.Plan(STUDIES[study_name], str(tmp_path / folder), [], {}, {}, seed=seed,
                                     seeds=[seed + 1], trials=trials)
            study = study_plan.open_study(plan, storage, lock)
            assert study.direction == optuna.study.StudyDirection.MAXIMIZE  # TPE draws toward the highest values
            claimer = Claimer(study, lock, search_trials=trials, final_seeds=[])
            while (trial := claimer.claim()) is not None:
                settings, _ = study_worker.run_settings(plan, trial)
                if killed_mid_run and launch == 0 and len(drawn) == trials - 1:
                    study.tell(trial, state=TrialState.FAIL)  # as work() does: the job is enqueued again
                    break
                drawn.append(settings)
                study.tell(trial, settings["label_smoothing"] - abs(settings["lr"] - 0.05))
        return drawn

    uninterrupted = search("a", 42, [12])
    assert len({json.dumps(settings, sort_keys=True) for settings in uninterrupted}) == 12
    assert search("b", 42, [12]) == uninterrupted
    assert search("c", 42, [5, 12]) == uninterrupted  # stopped after 5 trials, then resumed
    assert search("d", 42, [5, 12], killed_mid_run=True) == uninterrupted  # trial 4 retried, then 5 onwards
    assert search("e", 7, [12]) != uninterrupted
    # the MLP-Mixer's search shares the ResNet's settings but not its draws of them
    mixer = search("f", 42, [12], study_name="mlpmixer_best")
    shared = ("optimizer", "lr", "weight_decay", "batch_size", "lr_schedule", "label_smoothing", "augment", "mix")
    assert all([mixer_settings[key] for key in shared] != [settings[key] for key in shared]
               for mixer_settings, settings in zip(mixer, uninterrupted))


def _draw_lr(completed, best_lr, running=()):
    """The learning rate that the search's sampler draws for trial number ``completed`` after ``completed`` trials
    spread over [1e-4, 1] whose accuracy falls away from ``best_lr``, while other workers run ``running``."""
    from optuna.distributions import FloatDistribution

    space = {"lr": FloatDistribution(1e-4, 1.0, log=True)}
    study = optuna.create_study(direction="maximize")
    for number in range(completed):
        lr = 10 ** (-4 + number / 2)
        study.add_trial(optuna.trial.create_trial(params={"lr": lr}, distributions=space, value=-abs(lr - best_lr)))
    for lr in running:
        study.add_trial(optuna.trial.create_trial(params={"lr": lr}, distributions=space, state=TrialState.RUNNING))
    study.sampler = study_search.search_sampler("resnet18_best", 42, completed)
    return study.ask(space).params["lr"]


def test_a_search_draws_its_first_8_trials_at_random_and_the_later_ones_from_the_results_before_them():
    assert study_search.RANDOM_TRIALS == 8  # as docs/studies.md and the report say
    assert _draw_lr(7, best_lr=0.05) == _draw_lr(7, best_lr=0.0005)
    assert _draw_lr(8, best_lr=0.05) != _draw_lr(8, best_lr=0.0005)


def test_a_search_counts_a_trial_running_on_another_worker_as_poor_and_draws_elsewhere():
    alone = _draw_lr(9, best_lr=0.05)
    assert _draw_lr(9, best_lr=0.05, running=[alone]) != alone


def test_of_tied_search_trials_the_earliest_is_retrained_as_the_report_says():
    from studies.scheduler import best_search_trial

    study = optuna.create_study(direction="maximize")
    for value in (0.5, 0.7, 0.7, 0.6):
        trial = study.ask()
        trial.set_user_attr("role", "search")
        study.tell(trial, value)
    final = study.ask()
    final.set_user_attr("role", "final")
    study.tell(final, 0.9)  # a final run's accuracy does not make it a search trial
    assert best_search_trial(study.get_trials()).number == 1


def test_a_search_trial_is_never_pruned_after_its_last_epoch(study_args, tmp_path, monkeypatch):
    monkeypatch.setattr(study_search.SameBudgetMedianPruner, "prune", lambda self, study, trial: True)
    out = str(tmp_path / "out")
    assert studies_main(study_args("mlpmixer_best", "--trials", "2", "--set", "embed_dim=16", "--set",
                                   "num_blocks=1", epochs=1)) == 0
    trials = load_study(out, "mlpmixer_best").get_trials()
    search = [t for t in trials if t.user_attrs["role"] == "search"]
    assert [t.state for t in search] == [TrialState.COMPLETE] * 2
    assert all(t.value == t.intermediate_values[1] for t in search)
    assert [t.state for t in trials if t.user_attrs["role"] == "final"] == [TrialState.COMPLETE]

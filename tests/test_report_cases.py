"""The report's sentences for logs that the fixture of test_report.py does not hold: studies under way, runs
that failed or ended no epoch, a single setting, seeds that do or do not separate settings, tied trials, runs
that shared a processor, runs at chance level and the hidden-unit measures."""
import os
import warnings

import pytest

from report_logs import hidden_units, markdown_of, write_activation_runs, write_run
from studies import report
from studies.overlap import shared_processor_sentence, shared_processors
from studies.run_values import epoch_seconds, fmt, mean_std
from studies.report import build_report


def test_a_patch_size_study_with_one_timed_setting_compares_nothing(tmp_path):
    out = str(tmp_path / "runs")
    write_run(out, "mlpmixer_patch", "patch_size-4_seed-42", {"patch_size": 4}, [0.6, 0.7], num_params=2_000_000)
    text = markdown_of(out)
    assert ("Only patch_size 4 has a timed epoch (2,000,000 parameters, 2.00 s per training epoch): there is nothing "
            "to compare it with yet.") in text
    assert "Parameters range" not in text


def test_the_patch_cost_table_leaves_out_a_setting_without_a_timed_epoch_or_a_parameter_count(tmp_path):
    out = str(tmp_path / "runs")
    # the larger model is the faster one here, as patch sizes can make it: each range names its own extremes
    for patch, params, seconds in ((4, 2_000_000, 1.0), (8, 2_500_000, 0.5)):
        write_run(out, "mlpmixer_patch", f"patch_size-{patch}_seed-42", {"patch_size": patch}, [0.6, 0.7],
                  num_params=params, seconds=seconds)
    # diverged in its first epoch: counted, never timed
    write_run(out, "mlpmixer_patch", "patch_size-2_seed-42", {"patch_size": 2}, [], outcome="diverged",
              num_params=3_000_000, logged={"train_seconds": []})
    write_run(out, "mlpmixer_patch", "patch_size-16_seed-42", {"patch_size": 16}, [0.6, 0.7], num_params=None)
    text = markdown_of(out)
    assert "| patch_size | parameters | s/epoch (train) | train img/s |\n|---|---|---|---|\n" \
        "| 4 | 2,000,000 | 1.00 | 45000 |\n| 8 | 2,500,000 | 0.50 | 90000 |\n" in text
    assert ("Parameters range from 2,000,000 (patch_size 4) to 2,500,000 (patch_size 8); a training epoch takes from "
            "0.50 s (patch_size 8) to 1.00 s (patch_size 4), 2.0 times as long.") in text


def test_a_diverged_run_is_said_to_diverge_for_the_reason_its_results_give(tmp_path):
    out = str(tmp_path / "runs")
    write_run(out, "resnet18_lr", "lr-0.1_seed-42", {"lr": 0.1}, [0.1, 0.1], outcome="diverged",
              logged={"error": "the validation loss was nan after epoch 3"})
    write_run(out, "resnet18_lr", "lr-0.01_seed-42", {"lr": 0.01}, [0.1, 0.1], outcome="diverged",
              logged={"error": 3})  # edited by hand
    text = markdown_of(out)
    assert "lr-0.1_seed-42 diverged: the validation loss was nan after epoch 3." in text
    assert "'error' is not a string: 3" in text and "lr-0.01_seed-42 diverged: its training loss" in text


def test_a_run_folder_copied_into_a_study_is_left_out_and_named(tmp_path):
    out = str(tmp_path / "runs")
    runs = os.path.join(out, "mlp_activation", "runs")
    written_in = {"relu": os.path.join(runs, "activation-relu_seed-42"),  # tanh's ran on Windows, reported here
                  "tanh": "C:\\Users\\me\\runs\\mlp_activation\\runs\\activation-tanh_seed-42"}
    for activation, logdir in written_in.items():
        write_run(out, "mlp_activation", f"activation-{activation}_seed-42", {"activation": activation}, [0.5, 0.6],
                  args={"logdir": logdir})
    write_run(out, "mlp_activation", "my_backup", {"activation": "relu"}, [0.5, 0.6],
              args={"logdir": os.path.join(runs, "activation-relu_seed-42")})
    text = markdown_of(out)
    assert ("Left out, as copies of runs made elsewhere (their results.json was written in another folder): "
            f"{os.path.join(runs, 'my_backup')} (written in {os.path.join(runs, 'activation-relu_seed-42')}).") in text
    assert "Grid over activation: relu, tanh; 2 runs." in text and "| my_backup |" not in text


def test_a_search_report_while_its_final_run_trains_claims_no_test_accuracy(tmp_path):
    out = str(tmp_path / "runs")
    write_run(out, "resnet18_best", "trial-0000", {"optimizer": "momentum", "lr": 0.1, "epochs": 2}, [0.5, 0.6],
              role="search")
    os.makedirs(os.path.join(out, "resnet18_best", "runs", "final_seed-43"))  # claimed, before its first epoch
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = markdown_of(out)
    assert "No final run has completed yet, so the best configuration has no test accuracy (1 final run started)." \
        in text
    assert "final_seed-43 has not finished (0 epochs logged)" in text
    assert "| final_seed-43 | no epoch logged | - |" in text
    assert "retrained" not in text and "Full hyperparameters" not in text


def test_a_report_of_runs_before_their_first_epoch_says_that_nothing_is_logged_yet(tmp_path):
    os.makedirs(tmp_path / "runs" / "mlp_activation" / "runs" / "activation-relu_seed-42")  # as a run starts
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as matplotlib's for a legend of curves without a point
        markdown_path, *_ = build_report(str(tmp_path / "runs"))
    with open(markdown_path) as f:
        text = f.read()
    for what in ("Devices", "PyTorch", "Precision", "Data", "Split"):
        assert f"\n- {what}: none logged yet.\n" in text, what


def test_a_search_whose_finished_trials_ended_no_epoch_has_no_empty_figure(tmp_path):
    out = str(tmp_path / "runs")
    write_run(out, "resnet18_best", "trial-0000", {"lr": 0.5}, [], role="search", outcome="diverged")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as matplotlib's for a legend without a point
        text = markdown_of(out)
    assert "1 search trial finished: 1 diverged." in text
    assert "No finished search trial ended an epoch, so there is no figure of their validation accuracy." in text
    assert not os.path.exists(os.path.join(out, "report", "resnet18_best_search.png"))


def test_a_report_of_studies_under_way_says_what_is_missing_with_counts_in_words(tmp_path):
    out = str(tmp_path / "runs")
    for activation, accs, outcome in (("relu", [0.5], "completed"), ("tanh", [0.3], "error"), ("sigmoid", [0.2], None)):
        folder = write_run(out, "mlp_activation", f"activation-{activation}_seed-42", {"activation": activation}, accs,
                           outcome=outcome or "completed", test_acc=0.5 if outcome == "completed" else None,
                           args={"epochs": 1})
        if outcome is None:  # still training: no trial.json yet
            os.remove(os.path.join(folder, "trial.json"))
    write_run(out, "resnet18_best", "trial-0000", {"lr": 0.1}, [0.9], role="search")
    markdown_path, *_ = build_report(out)
    with open(markdown_path) as f:
        text = f.read()
    for sentence in ("Report generated ", " from 4 runs.", "Grid over activation: relu, tanh, sigmoid; 3 runs.",
                     "These runs were set to train for 1 epoch; Problem 4 asks for at least 10.",
                     "activation-sigmoid_seed-42 has not finished (1 epoch logged); rerun the study to complete it.",
                     "activation-tanh_seed-42 failed: see its train.log.", "1 search trial finished: 1 completed.",
                     "Best trial: 0, final validation accuracy 0.9000 after 1 epoch; its settings: lr=0.1000.",
                     "The best configuration has not been retrained yet."):
        assert sentence in text, sentence


def test_a_report_says_when_the_seeds_do_not_separate_the_two_highest_settings(tmp_path):
    out = write_activation_runs(tmp_path, (("relu", (0.50, 0.60)), ("tanh", (0.55, 0.56)), ("sigmoid", (0.30, 0.31))))
    text = markdown_of(out)
    assert "The highest is activation tanh, 0.0050 above the next (relu)" in text
    assert ("Their runs overlap (tanh 0.5500 to 0.5600, relu 0.5000 to 0.6000): these seeds do not separate tanh "
            "from relu.") in text


def test_a_report_names_two_settings_that_tie_for_the_highest(tmp_path):
    text = markdown_of(write_activation_runs(tmp_path, (("relu", (0.5,)), ("tanh", (0.5,)), ("sigmoid", (0.3,)))))
    assert "The highest, 0.5000, is shared by activation relu and tanh." in text and "The highest is" not in text


def test_a_grid_report_gives_each_settings_mean_test_accuracy_only_when_a_run_was_tested(tmp_path):
    text = markdown_of(write_activation_runs(tmp_path / "a", (("relu", (0.5, 0.6)), ("tanh", (0.4,)))))
    assert "Test accuracy (mean): relu: 0.5500, tanh: 0.4000." in text
    untested = str(tmp_path / "b")
    for activation, final in (("relu", 0.5), ("tanh", 0.4)):
        write_run(untested, "mlp_activation", f"activation-{activation}_seed-42", {"activation": activation}, [final])
    assert "Test accuracy" not in markdown_of(untested)


def test_a_grids_seed_table_counts_completed_runs_only(tmp_path):
    out = write_activation_runs(tmp_path, (("relu", (0.50, 0.52)), ("tanh", (0.45, 0.47))))
    write_run(out, "mlp_activation", "activation-relu_seed-44", {"activation": "relu"}, [0.1], outcome=None, seed=44)
    text = markdown_of(out)
    assert "| relu | 2 of 3 | 0.5100 ± 0.0141 | 0.5100 ± 0.0141 | 0.5100 ± 0.0141 |" in text
    assert "| tanh | 2 | 0.4600 ± 0.0141 |" in text


def test_seeds_that_meet_at_one_value_do_not_separate_two_settings(tmp_path):
    out = write_activation_runs(tmp_path, (("relu", (0.50, 0.52)), ("tanh", (0.48, 0.50))))
    assert ("Their runs overlap (relu 0.5000 to 0.5200, tanh 0.4800 to 0.5000): these seeds do not separate relu "
            "from tanh.") in markdown_of(out)


def test_seeds_that_all_ended_at_one_value_are_stated_as_one_value(tmp_path):
    out = write_activation_runs(tmp_path, (("relu", (0.95, 1.0)), ("tanh", (1.0, 1.0))))
    assert ("Their runs overlap (tanh all 1.0000, relu 0.9500 to 1.0000): these seeds do not separate tanh "
            "from relu.") in markdown_of(out)


def test_a_grid_with_some_runs_set_below_10_epochs_says_so_and_gives_the_spread_of_peak_epochs(tmp_path):
    out = str(tmp_path / "runs")
    for seed, valid_accs, epochs in ((42, [0.3, 0.5, 0.4], 15), (43, [0.3, 0.4, 0.5], 5)):
        write_run(out, "mlp_activation", f"activation-relu_seed-{seed}", {"activation": "relu"}, valid_accs,
                  seed=seed, args={"epochs": epochs})
    text = markdown_of(out)
    assert "These runs were set to train for 5 or 15 epochs; Problem 4 asks for at least 10." in text
    assert "Epoch of the highest validation accuracy (of 3), by activation: relu 2 to 3." in text


def test_runs_set_to_the_10_epochs_problem_4_asks_for_are_not_called_short(tmp_path):
    out = str(tmp_path / "runs")
    write_run(out, "mlp_activation", "activation-relu_seed-42", {"activation": "relu"}, [0.3, 0.5], args={"epochs": 10})
    assert "Problem 4 asks for at least" not in markdown_of(out)


def test_a_report_names_the_one_setting_whose_spread_is_unknown(tmp_path):
    out = write_activation_runs(tmp_path, (("relu", (0.50, 0.52)), ("tanh", (0.60,)), ("sigmoid", (0.30, 0.31))))
    text = markdown_of(out)
    assert ("With one completed run of activation tanh, whether other seeds keep tanh above relu is unknown "
            "(`--seeds N` repeats every setting).") in text


def test_a_search_section_names_tied_trials_and_every_seed_of_the_final_runs(tmp_path):
    out = str(tmp_path / "runs")
    settings = {"optimizer": "adamw", "lr": 0.001, "epochs": 2}
    for trial in (0, 1, 2):
        write_run(out, "resnet18_best", f"trial-000{trial}", {**settings, "lr": 0.001 * (trial + 1)},
                  [0.5, 0.8 if trial < 2 else 0.7], role="search", trial=trial)
    for seed in (42, 43):
        write_run(out, "resnet18_best", f"final_seed-{seed}", settings, [0.5, 0.8], role="final", trial=1 + seed,
                  seed=seed, test_acc=0.79, args={**settings, "seed": seed})
    text = markdown_of(out)
    assert "Best trial: 0, final validation accuracy 0.8000" in text
    assert "Trial 1 reached the same validation accuracy; the earliest trial is the one retrained." in text
    assert "retrained 2 times (seeds 42 and 43)" in text and "| seed | 42, 43 |" in text


def test_report_numbers_below_a_thousandth_keep_two_significant_digits_and_a_missing_one_is_a_dash():
    assert [fmt(v) for v in (0.0, 0.001, 0.0015, 0.00099, 0.00001, -0.0005, 0.25)] == [
        "0.0000", "0.0010", "0.0015", "9.9e-04", "1.0e-05", "-5.0e-04", "0.2500"]
    assert (fmt(12345), fmt(None), fmt("adamw"), fmt(0.5, digits=2)) == ("12,345", "-", "adamw", "0.50")
    assert [mean_std(v) for v in ([None, None], [0.5, None], [0.5, 0.7])] == ["-", "0.5000", "0.6000 ± 0.1414"]


def test_seconds_per_epoch_are_the_median_after_the_first_epoch_unless_it_is_the_only_one():
    assert [epoch_seconds({"train_seconds": s}) for s in ([9.0, 2.0, 4.0, 3.0], [9.0, 2.0], [4.0], [], None)] == [
        3.0, 2.0, 4.0, None, None]
    assert epoch_seconds({}) is None


def test_the_runs_that_shared_a_processor_while_they_trained_are_found_from_their_epoch_times():
    def run(name, ends, host="node1", device="GPU-a", study="mlpmixer_patch", seconds=10.0, valid=1.0, train=None):
        results = {"host": host, "device_id": device, "epoch_end_times": ends,
                   "train_seconds": train or [seconds] * len(ends), "valid_seconds": [valid] * len(ends)}
        return {"study": study, "name": name, "path": f"/out/{study}/runs/{name}", "results": results}

    runs = [run("a", [100, 111]), run("b", [105, 116]),       # a and b overlap on GPU-a
            run("c", [105, 116], device="GPU-b"),              # the same time on another GPU
            run("d", [200, 211]),                              # after a and b
            run("e", [105, 116], host="node2"),                # another machine
            run("f", [150, 300]),                              # resumed: its epochs bracket d's, neither meets it
            run("g", [208], study="mlp_activation", seconds=3.0),  # another study's run beside d
            {"study": "mlpmixer_patch", "name": "h", "path": "/out/mlpmixer_patch/runs/h",
             "results": {"train_seconds": [10.0]}},  # older logs, without epoch times
            run("i", [400, 431]), run("j", [411, 420]),  # j trained between i's two epochs (i resumed), touching both
            run("k", [500], valid=5.0), run("l", [488], seconds=2.0),  # l trained while k validated (485 to 500)
            run("m", [600], valid=None), run("n", [589.5], seconds=2.0),  # m logged no validation: it began at 590
            run("o", [None, 711]), run("p", [705]),  # o's first epoch has no end time; its second (700 to 711) counts
            run("q", [800, 811], train=[10.0]), run("r", [805]),  # q's second epoch has no training time: left out
            run("s", [900], host=None), run("t", [905], host=None)]  # no host logged: their machines are unknown
    shared = shared_processors(runs)
    assert {path: sorted(other["path"] for other in others) for path, others in shared.items()} == {
        "/out/mlpmixer_patch/runs/a": ["/out/mlpmixer_patch/runs/b"],
        "/out/mlpmixer_patch/runs/b": ["/out/mlpmixer_patch/runs/a"],
        "/out/mlpmixer_patch/runs/d": ["/out/mlp_activation/runs/g"],
        "/out/mlp_activation/runs/g": ["/out/mlpmixer_patch/runs/d"],
        "/out/mlpmixer_patch/runs/k": ["/out/mlpmixer_patch/runs/l"],
        "/out/mlpmixer_patch/runs/l": ["/out/mlpmixer_patch/runs/k"],
        "/out/mlpmixer_patch/runs/o": ["/out/mlpmixer_patch/runs/p"],
        "/out/mlpmixer_patch/runs/p": ["/out/mlpmixer_patch/runs/o"],
        "/out/mlpmixer_patch/runs/q": ["/out/mlpmixer_patch/runs/r"],
        "/out/mlpmixer_patch/runs/r": ["/out/mlpmixer_patch/runs/q"]}
    assert shared_processor_sentence(runs[:4], shared) == (
        "Trained while another run used the same processor (host and GPU, or CPU), so their seconds per epoch "
        "include that sharing: a (with b); b (with a); d (with mlp_activation/g).")
    assert shared_processor_sentence(runs[2:3], shared) is None


def test_a_grid_section_names_its_runs_that_trained_side_by_side(tmp_path):
    out = str(tmp_path / "runs")
    for patch, ends in ((4, [100.0, 104.0]), (8, [102.0, 106.0]), (16, [300.0, 304.0])):
        write_run(out, "mlpmixer_patch", f"patch_size-{patch}_seed-42", {"patch_size": patch}, [0.6, 0.7],
                  logged={"host": "node1", "device_id": "cpu", "epoch_end_times": ends})
    text = markdown_of(out)
    assert ("so their seconds per epoch include that sharing: patch_size-4_seed-42 (with patch_size-8_seed-42); "
            "patch_size-8_seed-42 (with patch_size-4_seed-42).") in text


def test_a_search_states_the_final_runs_hyperparameters_with_every_digit(tmp_path):
    out = str(tmp_path / "runs")
    best = {"optimizer": "adamw", "lr": 0.0012345678912345, "weight_decay": 0.00027346, "epochs": 2}
    write_run(out, "mlpmixer_best", "trial-0000", best, [0.5, 0.6], role="search")
    write_run(out, "mlpmixer_best", "final_seed-43", best, [0.5, 0.6], role="final", seed=43, trial=1, source_trial=0,
              test_acc=0.6, args={**best, "seed": 43}, model_config={"drop_rate": 0.123456789, "embed_dim": 384})
    text = markdown_of(out)
    for row in ("| lr | 0.0012345678912345 |", "| weight_decay | 0.00027346 |", "| model: drop_rate | 0.123456789 |",
                "| model: embed_dim | 384 |"):
        assert row in text, row


def test_a_grid_states_its_runs_hyperparameters_listing_each_value_where_they_differ(tmp_path):
    out = str(tmp_path / "runs")
    flags = {"optimizer": "sgd", "lr": 0.0123456789, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 128,
             "epochs": 2, "lr_schedule": "constant", "warmup_fraction": 0.2}
    config = {"input_size": 3072, "hidden_sizes": [1024, 512, 64, 64]}
    for activation in ("relu", "tanh", "sigmoid"):
        for seed in (42, 43):
            write_run(out, "mlp_activation", f"activation-{activation}_seed-{seed}", {"activation": activation},
                      [0.5, 0.6], seed=seed, args={**flags, "seed": seed},
                      model_config={**config, "activation": activation})
    section = markdown_of(out).split("## mlp_activation")[1]
    table = section.split("Hyperparameters of these runs (where they differ, each value is listed):")[1]
    rows = [line for line in table.split("\n\n")[1].splitlines()[2:]]
    assert rows == ["| optimizer | sgd |", "| lr | 0.0123456789 |", "| weight_decay | 0.0005 |",
                    "| batch_size | 128 |", "| epochs | 2 |", "| lr_schedule | constant |",
                    "| seed | 42, 43 |", "| precision | bf16 |",  # neither momentum nor warmup: sgd, constant
                    "| model: input_size | 3072 |", "| model: hidden_sizes | [1024, 512, 64, 64] |",
                    "| model: activation | relu, tanh, sigmoid |"]


@pytest.mark.parametrize("flags, read", [
    ({"optimizer": "momentum", "momentum": 0.8, "lr_schedule": "cosine", "warmup_fraction": 0.1},
     ["optimizer", "momentum", "lr_schedule", "warmup_fraction"]),
    ({"optimizer": "adam", "weight_decay": 5e-4, "momentum": 0.9}, ["optimizer"]),  # adam: no weight decay
    ({"optimizer": "adamw", "weight_decay": 5e-4, "lr_schedule": "onecycle", "warmup_fraction": 0.2},
     ["optimizer", "weight_decay", "lr_schedule", "warmup_fraction"]),
])
def test_the_hyperparameter_table_leaves_out_the_flags_that_training_does_not_read(flags, read):
    from studies.sections import hyperparameter_rows

    assert [key for key, _ in hyperparameter_rows([{"results": {"args": flags}}])] == read


def test_the_activation_section_tabulates_each_hidden_layers_slope_and_flat_units_from_the_logs(tmp_path):
    out = str(tmp_path / "runs")
    for seed, (derivative, flat) in zip((42, 43), ((0.4, 0.6), (0.5, 0.5))):
        write_run(out, "mlp_activation", f"activation-relu_seed-{seed}", {"activation": "relu"}, [0.2, 0.6], seed=seed,
                  logged={"hidden_units": hidden_units("relu", 1.0, (32, derivative, flat, 0.25), (16, 0.3, 0.7, 0))})
    write_run(out, "mlp_activation", "activation-sigmoid_seed-42", {"activation": "sigmoid"}, [0.2, 0.5],
              logged={"hidden_units": hidden_units("sigmoid", 0.25, (32, 0.05, 0.9, 0), (16, None, 0.1, 0))})
    # an older version's run has no measures, and a run that did not complete none to average
    write_run(out, "mlp_activation", "activation-tanh_seed-42", {"activation": "tanh"}, [0.2, 0.4])
    write_run(out, "mlp_activation", "activation-tanh_seed-43", {"activation": "tanh"}, [0.2], seed=43,
              outcome="diverged", logged={"hidden_units": hidden_units("tanh", 1.0, (32, 0.9, 0.9, 0.9))})
    text = markdown_of(out)
    assert ("Hidden units after the last epoch, over the 5,000 validation images (mean over completed runs). Mean "
            "derivative: the mean slope of each layer's activation at its inputs, which scales the gradient that "
            "passes through it (at most relu 1, sigmoid 0.25). Flat share: the share of unit-image pairs at which "
            "that slope is under 0.1 times its peak") in text
    assert ("| activation | hidden layer | units | mean derivative | flat share | units always flat |\n"
            "|---|---|---|---|---|---|\n"
            "| relu | 1 | 32 | 0.450 ± 0.071 | 0.550 ± 0.071 | 0.250 ± 0.000 |\n"
            "| relu | 2 | 16 | 0.300 ± 0.000 | 0.700 ± 0.000 | 0.000 ± 0.000 |\n"
            "| sigmoid | 1 | 32 | 0.050 | 0.900 | 0 |\n"
            "| sigmoid | 2 | 16 | - | 0.100 | 0 |\n\n") in text
    assert ("![each hidden layer's mean activation derivative and flat share, one line per activation]"
            "(mlp_activation_hidden_units.png)") in text


def first_layer(moved, initial=None, trained=None, change=None, units=128):
    """``first_layer`` as an MLP-Mixer run logs it (no measure given: a grid of patches within one window)."""
    return {"weight": "blocks.0.mlp_tokens.fc1.weight", "units": units, "moved": moved, "initial": initial,
            "trained": trained, "change": change, "measure": None if trained is None else "local_share"}


def test_a_grid_tabulates_how_far_each_settings_first_layer_moved_with_a_dash_where_it_has_no_measure(tmp_path):
    out = str(tmp_path / "runs")
    for seed, (moved, trained) in zip((42, 43), ((0.4, 0.3), (0.6, 0.5))):
        write_run(out, "mlpmixer_patch", f"patch_size-4_seed-{seed}", {"patch_size": 4}, [0.3, 0.6], seed=seed,
                  logged={"first_layer": first_layer(moved, 0.15, trained, 0.2)})
    write_run(out, "mlpmixer_patch", "patch_size-16_seed-42", {"patch_size": 16}, [0.3, 0.5],
              logged={"first_layer": first_layer(0.9)})
    write_run(out, "mlpmixer_patch", "patch_size-8_seed-42", {"patch_size": 8}, [0.3], outcome="diverged",
              logged={"first_layer": first_layer(5.0, 0.2, 0.9, 0.9)})  # not completed: not counted
    text = markdown_of(out)
    assert ("The first layer against its random initialisation (blocks.0.mlp_tokens.fc1.weight, 128 units; mean over "
            "completed runs). Moved:") in text
    assert ("of the initial weights, of the trained ones and of the change between them; a dash where there is none "
            "(a grid of 3x3 patches or fewer, all within that window).") in text
    assert ("| patch_size | moved | local share, initial | local share, trained | local share, change |\n"
            "|---|---|---|---|---|\n"
            "| 4 | 0.500 ± 0.141 | 0.150 ± 0.000 | 0.400 ± 0.141 | 0.200 ± 0.000 |\n"
            "| 16 | 0.900 | - | - | - |\n\n") in text
    assert "| 8 |" not in text.split("| patch_size | moved |", 1)[1].split("\n\n", 1)[0]


def test_a_grid_without_logged_first_layers_has_no_such_table(tmp_path):
    text = markdown_of(write_activation_runs(tmp_path, [("relu", [0.6]), ("tanh", [0.5])]))
    assert "The first layer against its random initialisation" not in text and "| moved |" not in text


def test_the_header_names_the_code_each_run_trained_with_and_in_how_many_runs(tmp_path):
    out = str(tmp_path / "runs")
    commit = "0123456789abcdef0123456789abcdef01234567"
    versions = {"relu": {"commit": commit, "modified": False}, "tanh": {"commit": commit, "modified": True},
                "sigmoid": None}
    for activation, version in versions.items():
        write_run(out, "mlp_activation", f"activation-{activation}_seed-42", {"activation": activation}, [0.2, 0.5],
                  logged={"code_version": version})
    write_run(out, "mlp_activation", "activation-relu_seed-43", {"activation": "relu"}, [0.2, 0.5], seed=43)  # older
    write_run(out, "mlp_activation", "activation-tanh_seed-43", {"activation": "tanh"}, [0.2, 0.5], seed=43,
              logged={"code_version": versions["relu"]})
    assert ("- Code: git commit 0123456789ab in 2 runs; git commit 0123456789ab with modified tracked files in 1 run; "
            "no git commit (not in a checkout, or git missing) in 1 run; not logged in 1 run.\n") in markdown_of(out)


def test_a_grid_names_its_completed_runs_that_ended_no_better_than_guessing(tmp_path):
    out = str(tmp_path / "runs")
    for lr, final in ((0.1, 0.0998), (0.01, 0.1101), (0.001, 0.8)):
        write_run(out, "resnet18_lr", f"lr-{lr}_seed-42", {"optimizer": "adam", "lr": lr}, [0.3, final])
    write_run(out, "resnet18_lr", "lr-0.0001_seed-42", {"optimizer": "adam", "lr": 0.0001}, [0.1], outcome="pruned")
    text = markdown_of(out)
    assert ("At chance level, with a final validation accuracy of at most 0.11 where guessing one of the ten classes "
            "scores about 0.10: lr 0.1 (lr-0.1_seed-42: 0.0998).") in text
    learned = write_activation_runs(tmp_path / "other", [("relu", [0.6]), ("tanh", [0.5])])
    assert "At chance level" not in markdown_of(learned)


def test_a_grid_without_logged_hidden_units_has_no_such_table(tmp_path):
    text = markdown_of(write_activation_runs(tmp_path, [("relu", [0.6]), ("tanh", [0.5])]))
    assert "Hidden units" not in text and "mean derivative" not in text and "hidden_units.png" not in text


def test_a_grids_curves_title_their_legends_with_the_setting_in_the_pngs_and_on_the_pdf_page(tmp_path, monkeypatch):
    out = write_activation_runs(tmp_path, [("relu", [0.6]), ("tanh", [0.5])])
    figures = []
    monkeypatch.setattr(report, "write_pdf", lambda path, sections, header_lines: figures.extend(
        block[-1] if block[0] == "pdf_page" else block[2] for section in sections for block in section.blocks
        if block[0] == "pdf_page" or block[0] == "figure" and block[1].startswith("mlp_activation_")))
    build_report(out)
    legends = [ax.get_legend() for figure in figures for ax in figure.axes]
    assert len(figures) == 5 and len(legends) == 8 and all(legends)  # four PNGs, and the PDF page of all four
    assert [legend.get_title().get_text() for legend in legends] == ["activation"] * 8

"""The report, built from fixture logs of all five studies written here with known numbers."""
import json
import os
import re
import shutil
from unittest import mock

import numpy as np
import pytest
from matplotlib.image import imsave

from studies import figures, report
from studies.__main__ import main as studies_main
from studies.definitions import STUDIES
from studies.overlap import shared_processor_sentence, shared_processors
from studies.report import build_report
from utils import generate_plots

DEVICE = "NVIDIA H100 80GB HBM3"


def write_run(out, study, name, settings, valid_accs, outcome="completed", role="grid", seed=42, test_acc=None,
              num_params=1000, seconds=2.0, model_config=None, args=None, trial=0, source_trial=None, logged=None):
    folder = os.path.join(out, study, "runs", name)
    os.makedirs(folder)
    epochs = len(valid_accs)
    results = {
        "train_losses": [2.0 - 0.1 * i for i in range(epochs)], "valid_losses": [2.1 - 0.1 * i for i in range(epochs)],
        "train_accs": [a + 0.05 for a in valid_accs], "valid_accs": valid_accs,
        "train_seconds": [seconds * 3] + [seconds] * (epochs - 1), "epochs_completed": epochs,
        "best_valid_acc": max(valid_accs) if valid_accs else None, "test_acc": test_acc, "test_loss": None,
        "best_epoch": valid_accs.index(max(valid_accs)) + 1 if valid_accs else None,
        "status": "diverged" if outcome == "diverged" else "completed", "num_params": num_params,
        "device_name": DEVICE, "torch_version": "2.11.0", "model_config": model_config or {},
        "data": {"dir": "/data", "test_images_sha1": "a7e2580c5033"}, "args": {"precision": "bf16", **(args or {})},
        "split": {"train": 45000, "valid": 5000, "test": 10000, "disjoint": True}, **(logged or {}),
    }
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump(results, f)
    with open(os.path.join(folder, "trial.json"), "w") as f:
        json.dump({"study": study, "trial": trial, "role": role, "settings": settings, "seed": seed,
                   "source_trial": source_trial, "outcome": outcome, "value": valid_accs[-1] if outcome == "completed" else None,
                   "error": None}, f)
    return folder


def write_fixture_logs(out):
    """Logs of every study: grids with two seeds, a diverged run, searches with a pruned trial and final runs."""
    for activation, base in (("relu", 0.50), ("tanh", 0.45), ("sigmoid", 0.40)):
        for seed, shift in ((42, 0.0), (43, 0.02)):
            write_run(out, "mlp_activation", f"activation-{activation}_seed-{seed}", {"activation": activation},
                      [base - 0.1, base + shift], seed=seed, test_acc=base, args={"epochs": 15})
    for lr, acc in ((0.1, None), (0.001, 0.80), (0.0001, 0.70)):
        write_run(out, "resnet18_lr", f"lr-{lr}_seed-42", {"optimizer": "adam", "lr": lr},
                  [0.1] if acc is None else [acc - 0.2, acc], outcome="diverged" if acc is None else "completed",
                  test_acc=acc, args={"epochs": 2})
    for patch, params, seconds in ((2, 3_000_000, 4.0), (4, 2_000_000, 1.0), (8, 1_000_000, 0.5)):
        write_run(out, "mlpmixer_patch", f"patch_size-{patch}_seed-42", {"patch_size": patch}, [0.6, 0.7],
                  test_acc=0.7, num_params=params, seconds=seconds)
    best = {"optimizer": "momentum", "lr": 0.1, "weight_decay": 5e-4, "epochs": 2, "batch_size": 512,
            "lr_schedule": "onecycle", "warmup_fraction": 0.2, "label_smoothing": 0.1}
    for study, model, picture in (("resnet18_best", "resnet18", "resnet18_kernels_rgb.png"),
                                  ("mlpmixer_best", "mlpmixer", "mlpmixer_token_mixing.png")):
        write_run(out, study, "trial-0000", best, [0.8, 0.9], role="search", trial=0)
        write_run(out, study, "trial-0001", {**best, "lr": 0.3}, [0.2], role="search", outcome="pruned", trial=1)
        final = write_run(out, study, "final_seed-43", best, [0.8, 0.88], role="final", seed=43, trial=2,
                          source_trial=0, test_acc=0.93, args={**best, "momentum": 0.9, "seed": 43},
                          model_config={"num_classes": 10})
        imsave(os.path.join(final, picture), np.random.default_rng(0).random((40, 40, 3)))
    return out


def write_activation_runs(tmp_path, finals_by_activation):
    """mlp_activation runs, one per final validation accuracy of each ``(activation, finals)``, seeds 42, 43...;
    returns their --out."""
    out = str(tmp_path / "runs")
    for activation, finals in finals_by_activation:
        for seed, final in enumerate(finals, start=42):
            write_run(out, "mlp_activation", f"activation-{activation}_seed-{seed}", {"activation": activation},
                      [0.2, final], seed=seed, test_acc=final)
    return out


def markdown_of(out):
    """The text of the report of the logs in ``out``, built without its PDF (seconds saved for the tests that
    read the Markdown; the PDF's own tests build it)."""
    with mock.patch.object(report, "write_pdf", lambda *args, **kwargs: None):
        with open(build_report(out)[0]) as f:
            return f.read()


@pytest.fixture
def fixture_logs(tmp_path):
    return write_fixture_logs(str(tmp_path / "runs"))


@pytest.fixture(scope="module")
def fixture_report(tmp_path_factory):
    """``(markdown path, pdf path, markdown text)`` of the report of the fixture logs, built once for the
    tests that only read it (a build with its PDF takes seconds)."""
    markdown_path, pdf_path = build_report(write_fixture_logs(str(tmp_path_factory.mktemp("report") / "runs")))
    with open(markdown_path) as f:
        return markdown_path, pdf_path, f.read()


def test_report_has_every_study_figure_and_table(fixture_report):
    markdown_path, pdf_path, text = fixture_report
    report_dir = os.path.dirname(markdown_path)
    for study in ("mlp_activation", "resnet18_lr", "mlpmixer_patch", "resnet18_best", "mlpmixer_best"):
        assert f"## {study}:" in text
    for study in ("mlp_activation", "resnet18_lr", "mlpmixer_patch"):
        for curve in ("train_losses", "valid_losses", "train_accs", "valid_accs"):
            assert f"({study}_{curve}.png)" in text
    for name in ("mlpmixer_patch_cost", "resnet18_best_search", "resnet18_best_final_curves",
                 "resnet18_best_visualisation", "mlpmixer_best_visualisation", "comparison_mixer_resnet"):
        assert f"({name}.png)" in text
    assert ("![parameters, seconds per training epoch and images per second against patch_size]"
            "(mlpmixer_patch_cost.png)") in text  # each picture with its caption
    for image in re.findall(r"\]\((\S+\.png)\)", text):
        assert os.path.getsize(os.path.join(report_dir, image)) > 1000
    with open(pdf_path, "rb") as f:
        pdf = f.read()
    # a title page; per study a text page, then its figures (a grid's four curves share one page): 1 + 5 + 11
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type /Page\b", pdf)) == 17


def test_report_states_what_the_logs_show(fixture_report):
    text = fixture_report[2]
    assert "Devices: NVIDIA H100 80GB HBM3." in text and "test images SHA-1 a7e2580c5033" in text
    assert "- Split: 45000/5000/10000 train/validation/test, disjoint.\n" in text
    assert "- Precision: bf16.\n" in text
    # relu: mean final accuracy (0.50 + 0.52) / 2 = 0.51; tanh 0.46; sigmoid 0.41
    assert "activation relu is highest, 0.0500 above the next (tanh) and 0.1000 above the lowest (sigmoid)." in text
    assert "Every relu run ended above every tanh run (relu 0.5000 to 0.5200, tanh 0.4500 to 0.4700)." in text
    assert "| relu | 2 | 0.5100 ± 0.0141 |" in text
    assert "lr-0.1_seed-42 diverged: its training loss was not finite in epoch 2." in text
    assert "lr 0.001 is highest, 0.1000 above the next (0.0001).\n" in text  # the two that did not diverge
    assert ("lr 0.001 and 0.0001, the two highest, have one completed run each: whether other seeds keep 0.001 above "
            "0.0001 is unknown") in text
    assert "validation accuracy against epoch, one line per activation (mean over seeds; band: min to max)" in text
    assert "validation accuracy against epoch, one line per lr (one run each)" in text
    # seconds per epoch leave out the first: 4.0, 1.0 and 0.5 s
    assert "a training epoch takes from 0.50 s (patch_size 8) to 4.00 s (patch_size 2), 8.0 times as long." in text
    assert "| 2 | 3,000,000 | 4.00 | 11250 |" in text
    assert "patch_size 2, 4 and 8 tie for the highest, 0.7000." in text
    assert "2 search trials finished: 1 completed, 1 pruned." in text
    assert "Best trial: 0, final validation accuracy 0.9000 after 2 epochs" in text
    assert "retrained once (seed 43) on the training split and tested once: test accuracy 0.9300; training time 8.0 s per run (training epochs only) on NVIDIA H100" in text
    assert "| lr_schedule | onecycle |" in text and "| momentum | 0.900000 |" in text


def test_report_states_each_settings_fit_from_the_logs(fixture_report):
    sections = {part.split(":", 1)[0]: part for part in fixture_report[2].split("\n## ")[1:]}
    # relu: training accuracy (0.55 + 0.57) / 2 = 0.56 against validation (0.50 + 0.52) / 2 = 0.51
    assert ("Training against validation accuracy at the last epoch, by activation (mean over completed runs; "
            "training accuracy is the epoch's mean over its augmented batches): relu 0.5600 against 0.5100 (gap "
            "+0.0500), tanh 0.5100 against 0.4600 (gap +0.0500), sigmoid 0.4600 against 0.4100 (gap +0.0500)."
            ) in sections["mlp_activation"]
    assert "Epoch of the highest validation accuracy (of 2), by activation: relu 2, tanh 2, sigmoid 2." in sections[
        "mlp_activation"]
    # the diverged lr 0.1 is not a completed run: neither sentence counts it
    assert "by lr (mean over completed runs; training accuracy is the epoch's mean over its augmented batches): " \
           "0.001 0.8500 against 0.8000 (gap +0.0500), 0.0001 0.7500 against 0.7000 (gap +0.0500)." in sections[
               "resnet18_lr"]


def test_report_names_the_settings_problem_4_asks_for_that_did_not_run(fixture_report, fixture_logs):
    sections = {part.split(":", 1)[0]: part for part in fixture_report[2].split("\n## ")[1:]}
    assert ("Problem 4 asks for lr 0.1, 0.01, 0.001, 0.0001 and 1e-05; 0.01 and 1e-05 did not run here "
            "(`--values 0.01 1e-05` adds them to this study).") in sections["resnet18_lr"]
    shutil.rmtree(os.path.join(fixture_logs, "mlpmixer_patch", "runs", "patch_size-8_seed-42"))
    shutil.rmtree(os.path.join(fixture_logs, "mlp_activation", "runs", "activation-tanh_seed-43"))
    text = markdown_of(fixture_logs)
    assert ("Problem 4 asks for at least 3 patch_size values; only 2 and 4 ran here (`--values` adds more to "
            "this study).") in text
    assert "Problem 4 asks for activation" not in text  # tanh still has its seed-42 run


def test_a_patch_size_study_with_one_timed_setting_compares_nothing(tmp_path):
    out = str(tmp_path / "runs")
    write_run(out, "mlpmixer_patch", "patch_size-4_seed-42", {"patch_size": 4}, [0.6, 0.7], num_params=2_000_000)
    text = markdown_of(out)
    assert ("Only patch_size 4 has a timed epoch (2,000,000 parameters, 2.00 s per training epoch): there is nothing "
            "to compare it with yet.") in text
    assert "Parameters range" not in text


def test_report_says_which_runs_are_shorter_than_problem_4_asks(fixture_report):
    sections = {part.split(":", 1)[0]: part for part in fixture_report[2].split("\n## ")[1:]}
    assert "These runs were set to train for 2 epochs; Problem 4 asks for at least 10." in sections["resnet18_lr"]
    assert "Problem 4 asks" not in sections["mlp_activation"]  # 15 epochs
    assert "Problem 4 asks" not in sections["mlpmixer_patch"]  # epochs not logged
    for study in ("resnet18_best", "mlpmixer_best"):
        assert "The final runs were set to train for 2 epochs; Problem 4 asks for at least 10." in sections[study]


def test_report_counts_the_final_runs_of_a_search_and_names_their_seeds(fixture_logs):
    best = {"optimizer": "momentum", "lr": 0.1, "epochs": 2}
    write_run(fixture_logs, "resnet18_best", "final_seed-44", best, [0.8, 0.9], role="final", trial=3,
              seed=44, source_trial=0, test_acc=0.91, args={**best, "seed": 44})
    text = markdown_of(fixture_logs)
    assert ("The best configuration, retrained 2 times (seeds 43 and 44) on the training split and tested once "
            "each: test accuracy 0.9200 ± 0.0141;") in text
    assert ("Final validation accuracy of the retrained runs: 0.8900 ± 0.0141, against 0.9000 for trial 0 (seed 42), "
            "which the search ranked best.") in text


def test_a_search_report_counts_only_the_final_runs_that_completed(fixture_logs):
    best = {"optimizer": "momentum", "lr": 0.1, "epochs": 2}
    for study, picture in (("resnet18_best", "resnet18_kernels_rgb.png"), ("mlpmixer_best", "mlpmixer_token_mixing.png")):
        shutil.rmtree(os.path.join(fixture_logs, study, "runs", "final_seed-43"))
        write_run(fixture_logs, study, "final_seed-43", best, [0.1], outcome="diverged", role="final", seed=43,
                  trial=2, source_trial=0, args={**best, "seed": 43})
        kept = write_run(fixture_logs, study, "final_seed-44", best, [0.8, 0.87], role="final", seed=44, trial=3,
                         source_trial=0, test_acc=0.92, args={**best, "seed": 44})
        imsave(os.path.join(kept, picture), np.random.default_rng(0).random((40, 40, 3)))
    text = markdown_of(fixture_logs)
    section = text[text.index("## resnet18_best"):text.index("## mlpmixer_best")]
    assert "retrained once (seed 44) on the training split and tested once: test accuracy 0.9200;" in section
    assert "Final validation accuracy of the retrained runs: 0.8700, against 0.9000 for trial 0" in section
    assert "final_seed-43 diverged: its training loss was not finite in epoch 2." in section
    assert "| seed | 43, 44 |" in section
    assert "![first-layer weights of the best model](resnet18_best_visualisation.png)" in section
    assert "comparison_mixer_resnet.png" in text  # from the ResNet's final run that saved its kernels


def test_a_search_report_while_its_final_run_trains_claims_no_test_accuracy(tmp_path):
    import warnings

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


def test_report_names_the_studies_that_have_not_run(fixture_logs):
    for study in ("resnet18_lr", "mlpmixer_best"):
        shutil.rmtree(os.path.join(fixture_logs, study))
    text = markdown_of(fixture_logs)
    assert "## resnet18_lr:" not in text and "## mlp_activation:" in text
    assert (f"- Not in this report, no runs under {fixture_logs} yet: resnet18_lr, mlpmixer_best "
            f"(`python -m studies run NAME --out {fixture_logs}` runs one).") in text


def test_a_report_of_runs_before_their_first_epoch_says_that_nothing_is_logged_yet(tmp_path):
    import warnings

    os.makedirs(tmp_path / "runs" / "mlp_activation" / "runs" / "activation-relu_seed-42")  # as a run starts
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as matplotlib's for a legend of curves without a point
        markdown_path, _ = build_report(str(tmp_path / "runs"))
    with open(markdown_path) as f:
        text = f.read()
    for what in ("Devices", "PyTorch", "Precision", "Data", "Split"):
        assert f"\n- {what}: none logged yet.\n" in text, what


def test_a_search_whose_finished_trials_ended_no_epoch_has_no_empty_figure(tmp_path):
    import warnings

    out = str(tmp_path / "runs")
    write_run(out, "resnet18_best", "trial-0000", {"lr": 0.5}, [], role="search", outcome="diverged")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as matplotlib's for a legend without a point
        text = markdown_of(out)
    assert "1 search trial finished: 1 diverged." in text
    assert "No finished search trial ended an epoch, so there is no figure of their validation accuracy." in text
    assert not os.path.exists(os.path.join(out, "report", "resnet18_best_search.png"))


def test_report_command_refuses_an_empty_folder(tmp_path, capsys):
    assert studies_main(["report", "--out", str(tmp_path)]) == 2
    assert "no study runs under" in capsys.readouterr().err


def test_study_logs_are_readable_by_the_templates_generate_plots(fixture_logs, tmp_path):
    runs = os.path.join(fixture_logs, "mlp_activation", "runs")
    folders = sorted(os.path.join(runs, name) for name in os.listdir(runs))
    generate_plots(folders, [os.path.basename(f) for f in folders], str(tmp_path / "plots"))
    assert sorted(os.listdir(tmp_path / "plots")) == ["train_accs.png", "train_losses.png", "valid_accs.png",
                                                      "valid_losses.png"]


def test_an_interrupted_report_keeps_the_previous_one_whole(fixture_logs, monkeypatch):
    import studies.render as render

    pdf_path = os.path.join(fixture_logs, "report", "report.pdf")
    os.makedirs(os.path.dirname(pdf_path))
    with open(pdf_path, "wb") as f:
        f.write(b"%PDF the previous report")

    def interrupted(file, sections, header_lines):
        file.write(b"%PDF-1.4 half a report")
        raise KeyboardInterrupt
    monkeypatch.setattr(render, "_write_pdf_pages", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_report(fixture_logs)
    with open(pdf_path, "rb") as f:
        assert f.read() == b"%PDF the previous report"
    assert not [name for name in os.listdir(os.path.dirname(pdf_path)) if name.startswith(".tmp")]


def test_a_report_folder_that_cannot_be_made_gets_one_line(fixture_logs, tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    assert studies_main(["report", "--out", fixture_logs, "--report_dir", str(tmp_path / "a_file")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: cannot create the report folder {tmp_path / 'a_file'} (File exists); "
                   "give a writable --report_dir")


def test_a_report_of_studies_under_way_says_what_is_missing_with_counts_in_words(tmp_path):
    out = str(tmp_path / "runs")
    for activation, accs, outcome in (("relu", [0.5], "completed"), ("tanh", [0.3], "error"), ("sigmoid", [0.2], None)):
        folder = write_run(out, "mlp_activation", f"activation-{activation}_seed-42", {"activation": activation}, accs,
                           outcome=outcome or "completed", test_acc=0.5 if outcome == "completed" else None,
                           args={"epochs": 1})
        if outcome is None:  # still training: no trial.json yet
            os.remove(os.path.join(folder, "trial.json"))
    write_run(out, "resnet18_best", "trial-0000", {"lr": 0.1}, [0.9], role="search")
    markdown_path, _ = build_report(out)
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
    assert "activation tanh is highest, 0.0050 above the next (relu)" in text
    assert ("Their runs overlap (tanh 0.5500 to 0.5600, relu 0.5000 to 0.6000): these seeds do not separate tanh "
            "from relu.") in text


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


def test_a_grid_with_some_runs_set_below_10_epochs_says_so_and_gives_the_spread_of_peak_epochs(tmp_path):
    out = str(tmp_path / "runs")
    for seed, valid_accs, epochs in ((42, [0.3, 0.5, 0.4], 15), (43, [0.3, 0.4, 0.5], 5)):
        write_run(out, "mlp_activation", f"activation-relu_seed-{seed}", {"activation": "relu"}, valid_accs,
                  seed=seed, args={"epochs": epochs})
    text = markdown_of(out)
    assert "These runs were set to train for 5 or 15 epochs; Problem 4 asks for at least 10." in text
    assert "Epoch of the highest validation accuracy (of 3), by activation: relu 2 to 3." in text


def test_a_report_names_the_one_setting_whose_spread_is_unknown(tmp_path):
    out = write_activation_runs(tmp_path, (("relu", (0.50, 0.52)), ("tanh", (0.60,)), ("sigmoid", (0.30, 0.31))))
    text = markdown_of(out)
    assert ("activation tanh has one completed run: whether other seeds keep tanh above relu is unknown (`--seeds N` "
            "repeats every setting).") in text


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


def test_the_runs_that_shared_a_processor_while_they_trained_are_found_from_their_epoch_times():
    def run(name, ends, host="node1", device="GPU-a", study="mlpmixer_patch", seconds=10.0, valid=1.0):
        results = {"host": host, "device_id": device, "epoch_end_times": ends, "train_seconds": [seconds] * len(ends),
                   "valid_seconds": [valid] * len(ends)}
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
            run("k", [500], valid=5.0), run("l", [488], seconds=2.0)]  # l trained while k validated (485 to 500)
    shared = shared_processors(runs)
    assert {path: sorted(other["path"] for other in others) for path, others in shared.items()} == {
        "/out/mlpmixer_patch/runs/a": ["/out/mlpmixer_patch/runs/b"],
        "/out/mlpmixer_patch/runs/b": ["/out/mlpmixer_patch/runs/a"],
        "/out/mlpmixer_patch/runs/d": ["/out/mlp_activation/runs/g"],
        "/out/mlp_activation/runs/g": ["/out/mlpmixer_patch/runs/d"],
        "/out/mlpmixer_patch/runs/k": ["/out/mlpmixer_patch/runs/l"],
        "/out/mlpmixer_patch/runs/l": ["/out/mlpmixer_patch/runs/k"]}
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


def test_every_line_of_a_long_section_and_of_the_header_reaches_the_pdf(fixture_logs, monkeypatch):
    out = fixture_logs
    shutil.rmtree(os.path.join(out, "mlpmixer_patch"))  # the header then names it in a line wider than a page
    for trial in range(2, 70):  # a search long enough for several pages
        write_run(out, "resnet18_best", f"trial-{trial:04d}", {"lr": 0.001 * trial, "note": "x" * 200}, [0.5],
                  role="search", trial=trial)
    pages, text_page = [], figures.text_page

    def recording_text_page(title, lines):
        pages.append((title, lines))
        return text_page(title, lines)

    monkeypatch.setattr(figures, "text_page", recording_text_page)
    markdown_path, _ = build_report(out)
    on_pages = "\n".join(line.strip() for _, lines in pages for line in lines)
    for trial in range(2, 70):
        assert re.search(rf"^{trial} +completed", on_pages, re.MULTILINE), trial
    search_title = f"resnet18_best: {STUDIES['resnet18_best'].question}"
    assert [title for title, _ in pages].count(f"{search_title} (continued)") > 1
    with open(markdown_path) as f:
        markdown = f.read().splitlines()
    header = [line[2:] for line in markdown if line.startswith("- ")]
    assert any(len(line) > figures.TEXT_PAGE_COLUMNS for line in header)
    assert all(line in on_pages.replace("\n", " ") for line in header)
    sentences = [line for line in markdown if line and not line.startswith(("#", "|", "![", "- "))]
    flowing = " ".join(on_pages.split())
    assert len(sentences) > 10 and all(" ".join(line.split()) in flowing for line in sentences)

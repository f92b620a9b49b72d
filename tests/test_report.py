"""The report, built from fixture logs of all five studies written here with known numbers: every figure and
table, what each section states, and how the report is written. Reports of other logs are in
test_report_cases.py."""
import json
import os
import re
import shutil

import numpy as np
import pytest
from matplotlib.image import imsave

from report_logs import markdown_of, write_fixture_logs, write_run
from studies import figures, render, search_sections
from studies.__main__ import main as studies_main
from studies.definitions import STUDIES
from studies.report import build_report
from utils import generate_plots


@pytest.fixture
def fixture_logs(tmp_path):
    return write_fixture_logs(str(tmp_path / "runs"))


@pytest.fixture(scope="module")
def fixture_report(tmp_path_factory):
    """``(markdown path, pdf path, markdown text)`` of the report of the fixture logs, built once for the
    tests that only read it (a build with its PDF takes seconds)."""
    markdown_path, pdf_path, *_ = build_report(write_fixture_logs(str(tmp_path_factory.mktemp("report") / "runs")))
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
    for name in ("mlpmixer_patch_cost", "resnet18_best_search", "resnet18_best_final_curves", "resnet18_best_confusion",
                 "mlpmixer_best_confusion",
                 "resnet18_best_visualisation", "mlpmixer_best_visualisation", "comparison_mixer_resnet"):
        assert f"({name}.png)" in text
    assert ("![parameters, seconds per training epoch and images per second against patch_size]"
            "(mlpmixer_patch_cost.png)\n\n*parameters, seconds per training epoch and images per second against "
            "patch_size*\n") in text  # each picture with its caption, as alt text and in view below it
    sections = dict(re.findall(r"^## (\w+):(.*?)(?=^## |\Z)", text, flags=re.M | re.S))
    for study, label in (("mlp_activation", "activation"), ("resnet18_best", "final run"),
                         ("mlpmixer_best", "final run")):  # the studies whose fixture runs logged their confusion
        assert f"| {label} | airplane | automobile | bird | cat |" in sections[study], study
    for image in re.findall(r"\]\((\S+\.png)\)", text):
        assert os.path.getsize(os.path.join(report_dir, image)) > 1000
    with open(pdf_path, "rb") as f:
        pdf = f.read()
    # a title page; per study a text page (two for each search), then its figures (a grid's four curves share one
    # page): 1 + 7 + 13
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type /Page\b", pdf)) == 21


def test_report_md_lists_its_sections_each_linked_to_its_heading(fixture_report):
    text = fixture_report[2]
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    links = re.findall(r"^- \[(.+)\]\((#\S+)\)$", text, flags=re.M)
    assert [title for title, _ in links] == headings and len(headings) == 5
    assert text.index("Contents:") < text.index("## ")
    # the anchor GitHub gives this heading: lower case, punctuation but '_' and '-' dropped, spaces to '-'
    assert ("mlpmixer_patch: How does the patch size affect the MLP-Mixer's accuracy, size and speed?",
            "#mlpmixer_patch-how-does-the-patch-size-affect-the-mlp-mixers-accuracy-size-and-speed") in links


def test_report_states_what_the_logs_show(fixture_report):
    text = fixture_report[2]
    assert "Devices: NVIDIA H100 80GB HBM3." in text and "test images SHA-1 a7e2580c5033" in text
    assert "- Split: 45000/5000/10000 train/validation/test, disjoint.\n" in text
    assert "- Precision: bf16.\n" in text
    # relu: mean final accuracy (0.50 + 0.52) / 2 = 0.51; tanh 0.46; sigmoid 0.41
    assert "The highest is activation relu, 0.0500 above the next (tanh) and 0.1000 above the lowest (sigmoid)." in text
    assert "Every relu run ended above every tanh run (relu 0.5000 to 0.5200, tanh 0.4500 to 0.4700)." in text
    assert ("Mean ± sample standard deviation over each activation's completed runs:\n\n"
            "| activation | completed runs |") in text
    assert "| relu | 2 | 0.5100 ± 0.0141 |" in text
    assert "lr-0.1_seed-42 diverged: its training loss was not finite in epoch 2." in text
    assert "The highest is lr 0.001, 0.1000 above the next (0.0001).\n" in text  # the two that did not diverge
    assert ("With one completed run each of lr 0.001 and 0.0001, the two highest, whether other seeds keep 0.001 "
            "above 0.0001 is unknown") in text
    assert "validation accuracy against epoch, one line per activation (mean over seeds; band: min to max)" in text
    assert "validation accuracy against epoch, one line per lr (one run each)" in text
    # seconds per epoch leave out the first: 4.0, 1.0 and 0.5 s
    assert ("Parameters range from 1,000,000 (patch_size 8) to 3,000,000 (patch_size 2); a training epoch takes from "
            "0.50 s (patch_size 8) to 4.00 s (patch_size 2), 8.0 times as long.") in text
    assert "| 2 | 3,000,000 | 4.00 | 11250 |" in text
    # a run's row: its only epoch's seconds when it ended one (lr 0.1), else the median after the first; 45,000 images
    assert "| lr-0.1_seed-42 | diverged | 1 | 0.1000 | 0.1000 | - | 1,000 | 6.00 | 7500 |" in text
    assert "| patch_size-8_seed-42 | completed | 2 | 0.7000 | 0.7000 | 0.7000 | 1,000,000 | 0.50 | 90000 |" in text
    assert "The highest, 0.7000, is shared by patch_size 2, 4 and 8." in text
    assert ("Final validation accuracy by patch_size (mean over completed runs), highest first: 2: 0.7000, 4: 0.7000, "
            "8: 0.7000.") in text  # tied settings keep the grid's order
    assert ("Search space (Optuna TPE sampler, the first 8 trials drawn at random, trials still running on other "
            "workers counted as poor; median pruner: from epoch 4 to a trial's last but one, once 5 trials have "
            "completed, a trial stops if its best validation accuracy so far is below the median at that epoch of the "
            "completed trials with as many epochs, when there are at least 2):") in text
    assert "2 search trials finished: 1 completed, 1 pruned." in text
    assert "Best trial: 0, final validation accuracy 0.9000 after 2 epochs" in text
    assert "retrained once (seed 43) on the training split and tested once: test accuracy 0.9300; training time 8.0 s per run (training epochs only) on NVIDIA H100" in text
    assert "| lr_schedule | onecycle |" in text and "| momentum | 0.9 |" in text
    assert "| weight_decay | 0.0005 |" in text


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
    assert "Here and below, a ± b is the mean and the sample standard deviation over the 2 retrained runs." in text
    assert ("Final validation accuracy of the retrained runs: 0.8900 ± 0.0141, against 0.9000 for trial 0 (seed 42), "
            "which the search ranked best.") in text


def test_a_search_report_counts_only_the_final_runs_that_completed(fixture_logs, monkeypatch):
    best = {"optimizer": "momentum", "lr": 0.1, "epochs": 2}
    pictures = {"resnet18_best": "resnet18_kernels_rgb.png", "mlpmixer_best": "mlpmixer_token_mixing.png"}
    for study, picture in pictures.items():
        shutil.rmtree(os.path.join(fixture_logs, study, "runs", "final_seed-43"))
        write_run(fixture_logs, study, "final_seed-43", best, [0.1], outcome="diverged", role="final", seed=43,
                  trial=2, source_trial=0, args={**best, "seed": 43})
        kept = write_run(fixture_logs, study, "final_seed-44", best, [0.8, 0.87], role="final", seed=44, trial=3,
                         source_trial=0, test_acc=0.92, args={**best, "seed": 44})
        imsave(os.path.join(kept, picture), np.random.default_rng(0).random((40, 40, 3)))
    drawn = []
    monkeypatch.setattr(figures, "images_figure", lambda images, title: drawn.append(
        (title, [caption for caption, _ in images])) or figures.Figure())
    text = markdown_of(fixture_logs)
    section = text[text.index("## resnet18_best"):text.index("## mlpmixer_best")]
    assert "retrained once (seed 44) on the training split and tested once: test accuracy 0.9200;" in section
    assert "Final validation accuracy of the retrained runs: 0.8700, against 0.9000 for trial 0" in section
    assert "final_seed-43 diverged: its training loss was not finite in epoch 2." in section
    assert "| seed | 43, 44 |" in section
    assert ("![first-layer weights of final_seed-44, a final run of the best configuration]"
            "(resnet18_best_visualisation.png)") in section  # the run that completed, not the one that diverged
    assert ("![ResNet18 kernels (resnet18_best final_seed-44) beside the MLP-Mixer's token-mixing weights "
            "(mlpmixer_best final_seed-44)](comparison_mixer_resnet.png)") in text
    titles = [title for title, _ in drawn]  # the PDF shows titles and captions, not report.md's captions
    assert titles == ["resnet18_best: final run final_seed-44", "mlpmixer_best: final run final_seed-44",
                      "first layers of the two best configurations"]
    # each saved picture carries its own title; the comparison adds which run each side comes from
    assert [captions for _, captions in drawn] == [["RGB"], [None], ["ResNet18: resnet18_best final_seed-44",
                                                                    "MLP-Mixer: mlpmixer_best final_seed-44"]]


def test_an_extended_search_reports_only_the_final_runs_of_its_new_best_trial(fixture_logs, monkeypatch):
    best = {"optimizer": "momentum", "lr": 0.05, "epochs": 2}
    write_run(fixture_logs, "resnet18_best", "trial-0003", best, [0.85, 0.95], role="search", trial=3)
    new_final = write_run(fixture_logs, "resnet18_best", "final_seed-43_trial-0003", best, [0.9, 0.94], role="final",
                          seed=43, trial=4, source_trial=3, test_acc=0.95, args={**best, "seed": 43})
    imsave(os.path.join(new_final, "resnet18_kernels_rgb.png"), np.random.default_rng(1).random((40, 40, 3)))
    read = []
    monkeypatch.setattr(search_sections, "imread", lambda path: read.append(path) or np.zeros((4, 4, 3)))
    text = markdown_of(fixture_logs)
    section = text[text.index("## resnet18_best"):text.index("## mlpmixer_best")]
    assert "Best trial: 3, final validation accuracy 0.9500" in section
    assert "retrained once (seed 43) on the training split and tested once: test accuracy 0.9500;" in section
    assert "against 0.9500 for trial 3 (seed 42), which the search ranked best." in section
    assert ("Not counted: the final run final_seed-43, which retrained trial 0, the best trial before later trials "
            "beat it.") in section
    assert "| final_seed-43 |" not in section and "| lr | 0.05 |" in section
    assert os.path.join(new_final, "resnet18_kernels_rgb.png") in read  # the comparison sets the new best's kernels
    assert os.path.join(os.path.dirname(new_final), "final_seed-43", "resnet18_kernels_rgb.png") not in read


def test_a_search_tabulates_how_far_training_moved_its_pictured_first_layer_and_the_models_measure(fixture_report):
    text = fixture_report[2]
    resnet = text[text.index("## resnet18_best"):text.index("## mlpmixer_best")]
    mixer = text[text.index("## mlpmixer_best"):]
    assert ("The first layer against its random initialisation (conv1.weight, 64 units). Moved: the norm of what "
            "training changed over the norm of the initial weights; below 1, the initial random weights outweigh what "
            "training added to the picture. Colour share: the share of each kernel's squared weight off its channel "
            "average (0 for a kernel that sees brightness only, about 2/3 for random weights), of the initial "
            "weights, of the trained ones and of the change between them.") in resnet
    assert ("| final run | moved | colour share, initial | colour share, trained | colour share, change |\n"
            "|---|---|---|---|---|\n"
            "| final_seed-43 | 1.250 | 0.667 | 0.410 | 0.350 |\n") in resnet
    assert "(blocks.0.mlp_tokens.fc1.weight, 128 units)" in mixer
    assert ("Local share: the share of each unit's squared weight within the 3x3 patches centred on its largest "
            "weight (1 for a unit as local as a 3x3 convolution)") in mixer
    assert "| final_seed-43 | 0.330 | 0.148 | 0.171 | 0.254 |\n" in mixer
    assert ("Training moved the ResNet18's kernels by 1.250 of their initial norm and the MLP-Mixer's token-mixing "
            "weights by 0.330.") in mixer


def test_a_first_layer_without_a_measure_is_tabulated_by_how_far_it_moved(fixture_logs):
    path = os.path.join(fixture_logs, "mlpmixer_best", "runs", "final_seed-43", "results.json")
    with open(path) as f:
        results = json.load(f)
    results["first_layer"] = {**results["first_layer"], "measure": None, "initial": None, "trained": None,
                              "change": None}  # 16x16 patches: a grid within one window
    with open(path, "w") as f:
        json.dump(results, f)
    mixer = markdown_of(fixture_logs).split("## mlpmixer_best", 1)[1]
    assert "added to the picture.\n\n| final run | moved |\n|---|---|\n| final_seed-43 | 0.330 |\n" in mixer


@pytest.mark.parametrize("missing", ["resnet18_best", "mlpmixer_pictures"])
def test_the_comparison_of_first_layers_needs_both_searches_pictures(fixture_logs, missing):
    if missing == "resnet18_best":
        shutil.rmtree(os.path.join(fixture_logs, "resnet18_best"))
    else:
        os.remove(os.path.join(fixture_logs, "mlpmixer_best", "runs", "final_seed-43", "mlpmixer_token_mixing.png"))
    text = markdown_of(fixture_logs)
    assert "The comparison with the ResNet18 kernels needs the final runs of both searches." in text
    assert "comparison_mixer_resnet.png" not in text


def test_report_names_the_studies_that_have_not_run(fixture_logs):
    for study in ("resnet18_lr", "mlpmixer_best"):
        shutil.rmtree(os.path.join(fixture_logs, study))
    text = markdown_of(fixture_logs)
    assert "## resnet18_lr:" not in text and "## mlp_activation:" in text
    assert (f"- Not in this report, no runs under {fixture_logs} yet: resnet18_lr, mlpmixer_best "
            f"(`python -m studies run NAME --out {fixture_logs}` runs one).") in text


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
    assert capsys.readouterr().err == (f"error: --report_dir {tmp_path / 'a_file'} is a file, not a folder; give the "
                                       "folder to write the report in\n")
    assert studies_main(["report", "--out", fixture_logs, "--report_dir", str(tmp_path / "a_file" / "report")]) == 2
    assert capsys.readouterr().err == (f"error: cannot create the report folder {tmp_path / 'a_file' / 'report'} "
                                       "(Not a directory); give a writable --report_dir\n")


@pytest.mark.parametrize("header_pages", [1, 2])
def test_the_pdfs_pages_are_numbered_and_its_contents_give_the_page_each_section_begins_on(fixture_logs, monkeypatch,
                                                                                           header_pages):
    for trial in range(2, 70):  # a search whose text takes several pages
        write_run(fixture_logs, "resnet18_best", f"trial-{trial:04d}", {"lr": 0.001 * trial, "note": "x" * 200}, [0.5],
                  role="search", trial=trial)
    for run in range(60 if header_pages == 2 else 0):  # each named in the header, which then takes two pages
        folder = os.path.join(fixture_logs, "mlp_activation", "runs", f"unreadable-{run:02d}")
        os.makedirs(folder)
        with open(os.path.join(folder, "results.json"), "w") as f:
            f.write("{")
    saved = []  # (figure, its texts as saved) for each page

    class RecordingPdf:
        def __init__(self, file):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            return False

        def savefig(self, fig):
            saved.append((fig, [text.get_text() for text in fig.texts]))

    monkeypatch.setattr(render, "PdfPages", RecordingPdf)
    build_report(fixture_logs)
    for number, (_, texts) in enumerate(saved, 1):
        assert f"{number} / {len(saved)}" in texts
    header = [texts for _, texts in saved if texts[0].startswith(render.REPORT_TITLE)]
    assert len(header) == header_pages
    contents = re.findall(r"^  page +(\d+)  (.+)$", "\n".join(texts[1] for texts in header), re.MULTILINE)
    assert [title for _, title in contents] == [f"{study.name}: {study.question}" for study in STUDIES.values()]
    for page, title in contents:
        assert saved[int(page) - 1][1][0] == title
    search_page = int(contents[-2][0])  # resnet18_best, whose text goes on over the page after its first
    assert saved[search_page][1][0] == f"{contents[-2][1]} (continued)"
    assert not [fig for fig, _ in saved if any(re.fullmatch(r"\d+ / \d+", text.get_text()) for text in fig.texts)]


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
    markdown_path = build_report(out)[0]
    on_pages = "\n".join(line.strip() for _, lines in pages for line in lines)
    for trial in range(2, 70):
        assert re.search(rf"^{trial} +completed", on_pages, re.MULTILINE), trial
    search_title = f"resnet18_best: {STUDIES['resnet18_best'].question}"
    assert [title for title, _ in pages].count(f"{search_title} (continued)") > 1
    with open(markdown_path) as f:
        markdown = f.read().splitlines()
    header = [line[2:] for line in markdown[:markdown.index("Contents:")] if line.startswith("- ")]
    assert any(len(line) > figures.TEXT_PAGE_COLUMNS for line in header)
    assert all(line in on_pages.replace("\n", " ") for line in header)
    # every line but headings, tables, figures and their captions (a PDF figure page carries its own title)
    sentences = [line for line in markdown if line and not line.startswith(("#", "|", "![", "- ", "*"))]
    flowing = " ".join(on_pages.split())
    assert len(sentences) > 10 and all(" ".join(line.split()) in flowing for line in sentences)

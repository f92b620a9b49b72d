"""``report.md`` and ``report.pdf`` from the studies' logs: the runs' folders are read, ``sections`` builds
one section per study, and ``render`` turns them into Markdown and PDF; the header says which devices,
software and data produced the logs."""
import datetime
import json
import os

from training.errors import UserError

from .definitions import STUDIES
from .overlap import shared_processors
from .render import write_figures, write_markdown, write_pdf
from .sections import counted, grid_section, search_section
from .worker import RUNS_FOLDER, TRIAL_FILE


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def load_runs(study_dir):
    """Every run folder of a study: ``{study, name, path, trial, results}`` (``trial`` None while unfinished)."""
    folder = os.path.join(study_dir, RUNS_FOLDER)
    runs = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        path = os.path.join(folder, name)
        results = _read_json(os.path.join(path, "results.json")) or {}
        runs.append({"study": os.path.basename(study_dir), "name": name, "path": path,
                     "trial": _read_json(os.path.join(path, TRIAL_FILE)),
                     "results": results})
    return runs


def provenance(all_runs):
    """Which devices, software and data produced the logs."""
    def listed(get, separator=", "):
        """The distinct values that ``get`` reads from the runs' results; none before a run ends its first epoch."""
        values = sorted({str(get(run["results"])) for run in all_runs if run["results"]})
        return separator.join(values) or "none logged yet"

    def data(results):
        return (f"{results.get('data', {}).get('dir', 'unknown folder')} (test images SHA-1 "
                f"{results.get('data', {}).get('test_images_sha1', 'not logged')})")
    generated = datetime.datetime.now().isoformat(timespec="seconds")
    return [f"Report generated {generated} from {counted(len(all_runs), 'run')}.",
            f"Devices: {listed(lambda r: r.get('device_name'), '; ')}.",
            f"PyTorch: {listed(lambda r: r.get('torch_version'))}.",
            f"Precision: {listed(lambda r: r.get('args', {}).get('precision', 'not logged'))}.",
            f"Data: {listed(data, '; ')}.",
            f"Split: {listed(_describe_split, '; ')}."]


def _describe_split(results):
    split = {"train": "?", "valid": "?", "test": "?", **results.get("split", {})}
    disjoint = {True: "disjoint", False: "overlapping"}.get(split.get("disjoint"), "overlap not logged")
    return f"{split['train']}/{split['valid']}/{split['test']} train/validation/test, {disjoint}"


def build_report(out, report_dir=None):
    """Write ``report.md``, ``report.pdf`` and every figure as a PNG; returns the report's paths."""
    report_dir = report_dir or os.path.join(out, "report")
    runs_of = {study.name: load_runs(os.path.join(out, study.name)) for study in STUDIES.values()}
    all_runs = [run for runs in runs_of.values() for run in runs]
    shared = shared_processors(all_runs)
    sections = [search_section(study, runs_of[study.name], out, shared) if study.is_search
                else grid_section(study, runs_of[study.name], shared)
                for study in STUDIES.values() if runs_of[study.name]]
    not_run = [name for name, runs in runs_of.items() if not runs]
    if not sections:
        raise UserError(f"no study runs under {out}; run `python -m studies run NAME --out {out}` first")
    try:
        os.makedirs(report_dir, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the report folder {report_dir} ({exc.strerror}); give a writable "
                        "--report_dir") from None
    write_figures(report_dir, sections)
    header = provenance(all_runs)
    if not_run:
        header.append(f"Not in this report, no runs under {out} yet: {', '.join(not_run)} "
                      f"(`python -m studies run NAME --out {out}` runs one).")
    markdown, pdf = os.path.join(report_dir, "report.md"), os.path.join(report_dir, "report.pdf")
    write_markdown(markdown, sections, header)
    write_pdf(pdf, sections, header)
    return [markdown, pdf]

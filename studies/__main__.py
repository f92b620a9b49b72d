"""The experiments of Problem 4 from one command each, and the report.

    python -m studies list
    python -m studies run mlp_activation [--workers N] [--seeds N] [main.py flags...]
    python -m studies run all                  # every study, one after another, then the report
    python -m studies report [--out runs]
    python -m studies status [--out runs] [--storage URL]   # progress, while workers run anywhere

``main.py`` flags (``--device``, ``--data_dir``, ``--epochs``...) apply to every run of the study;
a flag that a search would tune is held at the given value instead.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

import optuna
from optuna.trial import TrialState

from config import MAX_SEED, HelpFormatter, check_args, get_config_parser, given_flags
from training.cifar10 import check_valid_size, load_cifar10
from training.errors import CommandLineParser, UserError, set_up_command_line
from training.models import SCHEMAS, SHIPPED_CONFIG_DIR, load_model_config, validate_model_config

from .console import say
from .definitions import STUDIES, is_model_setting
from .scheduler import best_search_trial, is_lost, job_states, retrains_another
from .storage import JOURNAL_FILE, close_storage, open_storage, storage_kind
from .worker import RUNS_FOLDER, Plan, open_study, work

STUDY_FLAGS = ("model", "logdir", "resume", "visualize")  # set by the study for each run
# one training epoch on the full data, measured on this project's first 2-core CPU machine (README, "Problem 4")
CPU_EPOCH_SECONDS = {"resnet18": 1613, "mlpmixer": 473}
# one epoch (training and validation) on a later 2-core machine with AMX, in fp32 and with --precision bf16
AMX_CPU_EPOCH_SECONDS = {"resnet18": (640, 256), "mlpmixer": (226, 89)}
RUN_HELP = "python -m studies run --help and python main.py --help"  # a run's flags: the study's and main.py's
LAUNCHED_WORKER = "STUDIES_LAUNCHED_WORKER"  # in the environment of the workers that --workers N starts


def _parser():
    # no abbreviations: --seed (main.py's) must not be read as --seeds
    parser = CommandLineParser(prog="python -m studies", description=__doc__, allow_abbrev=False,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the studies, their grids and search spaces")
    run = commands.add_parser("run", help="run (or resume) a study; other flags go to every run, as main.py's",
                              formatter_class=HelpFormatter, allow_abbrev=False)
    run.add_argument("name", choices=[*STUDIES, "all"], help="the study; all: every study, then the report")
    run.add_argument("--out", default="runs", help="output folder: one subfolder per study")
    run.add_argument("--workers", type=int, default=1,
                     help="worker processes on this host (spread over the GPUs when there are several)")
    run.add_argument("--seeds", type=int, default=1,
                     help="runs per grid point (seeds --seed, --seed + 1, ...); final runs of a search (seeds "
                          "--seed + 1, ...; its trials train with --seed)")
    run.add_argument("--values", nargs="+", help="the grid's values instead of the study's defaults")
    run.add_argument("--trials", type=int, help="a search's budget of trials (default: the study's own: " + ", ".join(
        f"{study.name} {study.trials}" for study in STUDIES.values() if study.is_search) + ")")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="hold a model-config key at VALUE (JSON), e.g. embed_dim=256; main.py settings are "
                          "held by giving their flags")
    run.add_argument("--storage", help="Optuna storage: default a journal file in the study's folder (one "
                                       "host); postgresql://user:password@host/db for workers on several machines")
    run.add_argument("--retry_failed", action="store_true", help="run again the runs that raised an error")
    report = commands.add_parser("report", help="build report.md and report.pdf from the studies' logs",
                                 allow_abbrev=False)
    report.add_argument("--out", default="runs", help="the folder that holds the studies")
    report.add_argument("--report_dir", help="where to write the report (default: OUT/report)")
    status = commands.add_parser("status", help="each study's runs by outcome, and where and how far each running "
                                                "run is", allow_abbrev=False)
    status.add_argument("--out", default="runs", help="the folder that holds the studies")
    status.add_argument("--storage", help="the studies' database URL, if they run with one")
    return parser


def _parse_value(text):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _grid_values(study, texts):
    if texts is None:
        return list(study.grid.values)
    kind = type(study.grid.choices[0])
    try:
        values = [kind(text) for text in texts]
    except ValueError:
        raise UserError(f"--values: {study.grid.setting} takes {kind.__name__} values; choose from "
                        f"{', '.join(map(str, study.grid.choices))}") from None
    unknown = [text for text, value in zip(texts, values) if value not in study.grid.choices]
    if unknown:
        raise UserError(f"--values: {unknown[0]} is not a valid {study.grid.setting}; choose from "
                        f"{', '.join(map(str, study.grid.choices))}")
    return values


def _run_seeds(study, seed, count):
    """The seeds of a grid's runs per setting, or of a search's final runs: its trials train with ``seed``,
    and a final run with that seed would repeat the best trial exactly."""
    first = seed if study.grid else seed + 1
    if first + count - 1 > MAX_SEED:
        raise UserError(f"--seeds {count} from --seed {seed} reaches seed {first + count - 1} in {study.name}, past "
                        f"numpy's largest ({MAX_SEED}); lower --seed")
    return [first + i for i in range(count)]


def make_plan(study, options, train_argv):
    """Check every flag of a study's launch, before anything is written, and return its ``Plan``."""
    flags = given_flags(train_argv, RUN_HELP)
    for name in STUDY_FLAGS:
        if name in flags:
            raise UserError(f"--{name} is set by the study for each run; remove it")
    args = get_config_parser().parse_args(train_argv)
    problems = check_args(args)
    if problems:
        raise UserError(problems[0])
    for name in ("workers", "seeds", "trials"):
        if getattr(options, name) is not None and getattr(options, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(options, name)}")
    seeds = _run_seeds(study, args.seed, options.seeds)
    config_path = flags.get("model_config", os.path.join(SHIPPED_CONFIG_DIR, f"{study.model}.json"))
    model_config = load_model_config(config_path, study.model)
    searched = {dimension.setting for dimension in study.space}
    given = {**study.fixed, **{key: value for key, value in flags.items() if key in searched}}
    for item in options.set:
        key, sep, text = item.partition("=")
        if not sep or not is_model_setting(study.model, key):
            raise UserError(f"--set {item}: expected KEY=VALUE with KEY one of the {study.model} config keys "
                            f"({', '.join(SCHEMAS[study.model])}); main.py's settings are given as its flags")
        given[key] = _parse_value(text)
    for key in study.fixed:
        if key in flags or given[key] != study.fixed[key]:
            raise UserError(f"{study.name} holds {key} at {study.fixed[key]!r} (the question it answers); remove "
                            f"{'--' + key if key in flags else '--set ' + key}")
    held_model_keys = {key: value for key, value in given.items() if is_model_setting(study.model, key)}
    validate_model_config(study.model, {**model_config, **held_model_keys}, source="--set")
    if study.grid and study.grid.setting in {**flags, **given}:
        setting = study.grid.setting
        raise UserError(f"{study.name} varies {setting}; choose its values with --values, not "
                        f"{'--' + setting if setting in flags else '--set ' + setting}")
    if options.values is not None and not study.grid:
        raise UserError(f"--values: {study.name} is a search; it has no grid")
    values = _grid_values(study, options.values) if study.grid else []
    storage_kind(options.storage)
    # read here, once: a missing copy is fetched (or refused) before any worker starts or anything is written
    data = load_cifar10(args.data_dir)
    check_valid_size(len(data.train_labels), args.valid_size)
    return Plan(study=study, study_dir=os.path.join(options.out, study.name), train_argv=train_argv, given=given,
                model_config=model_config, seed=args.seed, seeds=seeds,
                values=values,
                trials=options.trials or study.trials, storage=options.storage, retry_failed=options.retry_failed,
                data_fingerprint=data.fingerprint())


def _worker_env(index, count, device):
    """Worker ``index``'s environment: on CUDA, one GPU of this host's, round robin, when there are several;
    on a CPU (or a host without a GPU), an equal share of the cores (workers with all cores each would
    fight over them)."""
    env = dict(os.environ)
    gpus = []
    if device == "cuda":
        visible = env.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            gpus = [gpu.strip() for gpu in visible.split(",") if gpu.strip()]
        else:
            import torch
            gpus = [str(i) for i in range(torch.cuda.device_count())]
    if len(gpus) > 1:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    if not gpus and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // count))
    env[LAUNCHED_WORKER] = "1"
    return env


def _launch_workers(count, argv, device):
    """Start ``count`` worker processes of this same command (each with ``--workers 1``); wait for all.

    Ctrl-C reaches every worker from the terminal; a SIGTERM sent to this process alone (``kill``,
    ``timeout``) is passed on to the workers, which then save their runs and stop as after Ctrl-C."""
    command = [sys.executable, "-m", "studies", *argv, "--workers", "1"]
    workers = []

    def pass_on(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop suffices while the workers save their runs
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, pass_on)
    try:
        workers.extend(subprocess.Popen(command, env=_worker_env(i, count, device)) for i in range(count))
        codes = [worker.wait() for worker in workers]
    except KeyboardInterrupt:  # let the workers save their runs
        codes = [worker.wait() for worker in workers]
    finally:
        signal.signal(signal.SIGTERM, previous)
    for worker, code in zip(workers, codes):
        if code < 0:  # a worker killed by a signal (the OOM killer's SIGKILL) says nothing itself
            say(f"a worker (pid {worker.pid}) was killed by {_signal_name(-code)}; rerun the same command to "
                "complete what it left", file=sys.stderr)
    # as a shell reports a process killed by signal N: 128 + N, not the negative code Popen gives
    return max(128 - code if code < 0 else code for code in codes)


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _summary(study):
    """A study's runs by outcome: ``3 completed``; for a search, ``search trials: ...; final runs: ...`` (and the
    final runs of an earlier best trial, which a search extended with more --trials beat)."""
    counts = {}
    trials = study.get_trials(deepcopy=False)
    best = best_search_trial(trials)
    for finished, live, latest in job_states(trials).values():
        unfinished = ("running" if live.state == TrialState.RUNNING else "waiting") if live else "to resume"
        outcome = (finished or live or latest).user_attrs.get("outcome") or unfinished
        role = latest.user_attrs.get("role", "grid")
        if retrains_another(latest, best):
            role = "earlier final"
        tally = counts.setdefault(role, {})
        tally[outcome] = tally.get(outcome, 0) + 1
    tallies = {role: ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items()))
               for role, outcomes in counts.items()}
    if "grid" in tallies:
        return tallies["grid"]
    labels = (("search", "search trials"), ("final", "final runs"), ("earlier final", "final runs of an earlier best"))
    return "; ".join(f"{label}: {tallies[role]}" for role, label in labels if role in tallies)


def _note_cpu_cost(study, args):
    """Say before a ResNet18 or MLP-Mixer study starts on a CPU what one epoch cost on one, so that nobody
    waits days for ``run all`` on a laptop unwarned."""
    import torch

    on_cpu = args.device == "cpu" or not torch.cuda.is_available()
    if on_cpu and study.model in CPU_EPOCH_SECONDS:
        fp32, bf16 = AMX_CPU_EPOCH_SECONDS[study.model]
        say(f"note: {study.name} trains {study.model} on the CPU, where one training epoch of the full data took "
            f"{CPU_EPOCH_SECONDS[study.model]} s on this project's first 2-core machine, and an epoch {fp32} s on a "
            f"later one with AMX ({bf16} s with --precision bf16; README, 'Problem 4'); on a CPU only mlp_activation "
            "is practical: run this study on a GPU (--device cuda), or try it with fewer --epochs", file=sys.stderr)


def run_study(study, options, train_argv, argv):
    plan = make_plan(study, options, train_argv)
    storage, lock = open_storage(plan.storage, plan.study_dir)
    launched = os.environ.get(LAUNCHED_WORKER) == "1"  # then the launch says what the study is and how it ended
    try:
        optuna_study = open_study(plan, storage, lock)
        args = get_config_parser().parse_args(train_argv)
        if not launched:
            say(f"study {study.name}: {study.question} Output in {plan.study_dir}")
            _note_cpu_cost(study, args)
        if options.workers > 1:
            code = _launch_workers(options.workers, argv, args.device)
        else:
            work(plan, optuna_study, lock)
            code = 0
        if not launched:
            say(f"study {study.name}: {_summary(optuna_study)}")
        return code
    finally:
        close_storage(storage)


def _list():
    for study in STUDIES.values():
        print(f"{study.name} ({study.model}): {study.question}")
        if study.fixed:
            print("  fixed: " + ", ".join(f"{key}={value}" for key, value in study.fixed.items()))
        if study.grid:
            grid = study.grid
            more = (f" (--values: any of {', '.join(map(str, grid.choices))}"
                    + (f"; Problem 4 asks for at least {grid.at_least})" if grid.at_least else ")")
                    if grid.choices != grid.values else "")
            print(f"  grid: {grid.setting} in {', '.join(map(str, grid.values))}{more}")
        if study.is_search:
            print(f"  search: {study.trials} trials (--trials N) over the settings below, then the best configuration "
                  "retrained and tested once per seed (--seeds N)")
        for dimension in study.space:
            print(f"  {dimension.setting}: {dimension.describe()}")


def _progress(study_dir, run_dir):
    """``epoch N of M`` from a run's results.json, or None before its first epoch ends."""
    try:
        with open(os.path.join(study_dir, RUNS_FOLDER, run_dir, "results.json")) as f:
            results = json.load(f)
        return f"epoch {results['epochs_completed']} of {results['args']['epochs']}"
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _print_status(name, study_dir, storage):
    """Print study ``name``'s runs by outcome and each running run's worker and progress; False if
    ``storage`` does not hold it."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # not in this database
        return False
    print(f"{name}: {_summary(study) or 'nothing run yet'}")
    now = time.time()
    for run_dir, (_, live, _) in sorted(job_states(study.get_trials(deepcopy=False)).items()):
        if live is None or live.state != TrialState.RUNNING:
            continue
        attrs = live.user_attrs
        heard = now - (attrs.get("heartbeat") or live.datetime_start.timestamp())
        where = f"on {attrs.get('host', 'an unknown host')} (pid {attrs.get('pid', '?')})"
        state = ("its worker is gone: the next worker to claim a run resumes it" if is_lost(live, now)
                 else f"last heard {heard:.0f} s ago")
        progress = _progress(study_dir, run_dir) or "first epoch"
        print(f"  {run_dir}: running {where}, {progress}; {state}")
    return True


def _status(out, storage_url):
    """Print every study that has started: its runs by outcome, then each running run's worker and progress."""
    if storage_url and storage_url.startswith("sqlite:///") and not os.path.isfile(storage_url[len("sqlite:///"):]):
        raise UserError(f"--storage {storage_url}: no such database file")
    shown = 0
    for name in STUDIES:
        study_dir = os.path.join(out, name)
        if storage_url is None and not os.path.isfile(os.path.join(study_dir, JOURNAL_FILE)):
            continue  # never create a journal just to look
        storage, _ = open_storage(storage_url, study_dir)
        try:
            shown += _print_status(name, study_dir, storage)
        finally:
            close_storage(storage)
    if not shown:
        ran_elsewhere = [name for name in STUDIES if os.path.isdir(os.path.join(out, name, RUNS_FOLDER))]
        if storage_url is None and ran_elsewhere:
            raise UserError(f"{out} holds runs of {', '.join(ran_elsewhere)} but no study journal; if they ran with "
                            "--storage, give the same --storage to see them")
        where = f"--storage {storage_url} --out {out}" if storage_url else f"--out {out}"
        raise UserError(f"no study has started in {storage_url or out}; `python -m studies run NAME {where}` starts one")


def _write_report(out, report_dir=None):
    from .report import build_report

    for path in build_report(out, report_dir):
        print(f"wrote {path}")


def _one_study_argv(argv, name):
    """The arguments of ``run all`` with ``name`` in place of the ``all`` that names the study (a flag's value may
    be ``all`` too, as in ``--out all``), for the workers that ``--workers N`` starts."""
    options, train_argv = _parser().parse_known_args(argv)
    wanted = (argparse.Namespace(**{**vars(options), "name": name}), train_argv)
    candidates = ([*argv[:i], name, *argv[i + 1:]] for i, token in enumerate(argv) if token == "all")
    return next(candidate for candidate in candidates if _parser().parse_known_args(candidate) == wanted)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    options, train_argv = _parser().parse_known_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if options.command == "list":
            _list()
            return 0
        if os.path.exists(options.out) and not os.path.isdir(options.out):
            raise UserError(f"--out {options.out} is a file, not a folder; give the folder of the studies")
        if options.command == "report":
            _write_report(options.out, options.report_dir)
            return 0
        if options.command == "status":
            _status(options.out, options.storage)
            return 0
        if options.name == "all":
            if options.values or options.trials:
                raise UserError("--values and --trials apply to one study; run the studies one by one")
            models = sorted({study.model for study in STUDIES.values()})
            if ("model_config" in given_flags(train_argv, RUN_HELP) or options.set) and len(models) > 1:
                raise UserError(f"--model_config and --set apply to one model, and the studies train "
                                f"{', '.join(models)}; run the studies one by one")
            seed = get_config_parser().parse_args(train_argv).seed
            for study in STUDIES.values():  # before the first study starts, not when a later one would
                _run_seeds(study, seed, options.seeds)
            for name, study in STUDIES.items():
                code = run_study(study, options, train_argv, _one_study_argv(argv, name))
                if code != 0:
                    print(f"study {name}: a worker exited with status {code}, so the studies after it did not "
                          "start; rerun the same command to resume", file=sys.stderr)
                    return code
            _write_report(options.out)
            return 0
        return run_study(STUDIES[options.name], options, train_argv, argv)
    except UserError as exc:
        say(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        say("\ninterrupted: rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    set_up_command_line()
    sys.exit(main())

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
import math
import os
import sys
from dataclasses import replace

import optuna

from config import MAX_SEED, HelpFormatter, check_args, get_config_parser, given_flags, unread_flag_warnings
from training.cifar10 import check_valid_size, load_cifar10
from training.devices import auto_precision, no_cuda_said, precision_hint
from training.errors import (CommandLineParser, OutputRefused, UserError, exit_after_output, path_flag,
                             reader_left, set_up_command_line)
from training.models import SCHEMAS, SHIPPED_CONFIG_DIR, load_model_config, validate_model_config

from .console import say
from .definitions import STUDIES, is_model_setting
from .launch import OUTPUT_REFUSED_STATUS, is_launched_worker, launch_workers
from .plan import Plan, open_study
from .scheduler import job_states, search_jobs, summary
from .status import print_status
from .storage import close_storage, open_storage, refused_write, storage_kind
from .worker import work

STUDY_FLAGS = ("model", "logdir", "resume", "visualize")  # set by the study for each run
# one training epoch on the full data, measured on this project's first 2-core CPU machine (docs/cpu.md)
CPU_EPOCH_SECONDS = {"resnet18": 1613, "mlpmixer": 473}
# one epoch (training and validation) on a later 2-core machine with AMX, in fp32 and with --precision bf16
AMX_CPU_EPOCH_SECONDS = {"resnet18": (640, 256), "mlpmixer": (226, 89)}
RUN_HELP = "python -m studies run --help and python main.py --help"  # a run's flags: the study's and main.py's


def _parser():
    # no abbreviations: --seed (main.py's) must not be read as --seeds
    parser = CommandLineParser(prog="python -m studies", description=__doc__, allow_abbrev=False,
                               formatter_class=HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, help="what to do; each has its own --help")
    commands.add_parser("list", help="the studies, their grids and search spaces")
    run = commands.add_parser("run", help="run (or resume) a study; other flags go to every run, as main.py's",
                              formatter_class=HelpFormatter, allow_abbrev=False)
    run.add_argument("name", choices=[*STUDIES, "all"], help="the study; all: every study, then the report")
    run.add_argument("--out", type=path_flag, default="runs", help="output folder: one subfolder per study")
    run.add_argument("--workers", type=int, default=1,
                     help="worker processes on this host (spread over the GPUs when there are several)")
    run.add_argument("--seeds", type=int, default=1,
                     help="runs per grid point (seeds --seed, --seed + 1, ...); final runs of a search (seeds "
                          "--seed + 1, ...; its trials train with --seed)")
    run.add_argument("--values", nargs="+",
                     help="the grid's values instead of the study's defaults (--values 2 4 8, or 2,4,8)")
    run.add_argument("--trials", type=int, help="a search's budget of trials (default: the study's own: " + ", ".join(
        f"{study.name} {study.trials}" for study in STUDIES.values() if study.is_search) + ")")
    run.add_argument("--search_minutes", type=float, metavar="MINUTES",
                     help="a search's time budget: after it, this launch draws no new trial; the trials under way "
                          "train to their end, then the best one's final runs train (a rerun carries the search on)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="hold a model-config key at VALUE (JSON), e.g. embed_dim=256; main.py settings are "
                          "held by giving their flags")
    run.add_argument("--storage", type=path_flag,
                     help="Optuna storage: default a journal file in the study's folder (one host); "
                          "postgresql://user@host/db for workers on several machines (the password in "
                          "~/.pgpass or PGPASSWORD)")
    run.add_argument("--retry_failed", action="store_true", help="run again the runs that raised an error")
    report = commands.add_parser("report", help="build report.md, report.pdf, runs.csv and epochs.csv from the "
                                 "studies' logs", formatter_class=HelpFormatter, allow_abbrev=False)
    report.add_argument("--out", type=path_flag, default="runs", help="the folder that holds the studies")
    report.add_argument("--report_dir", type=path_flag, help="where to write the report (default: OUT/report)")
    status = commands.add_parser("status", help="each study's runs by outcome, and where and how far each running "
                                                "run is", formatter_class=HelpFormatter, allow_abbrev=False)
    status.add_argument("--out", type=path_flag, default="runs", help="the folder that holds the studies")
    status.add_argument("--storage", type=path_flag, help="the studies' database URL, if they run with one")
    return parser


def _parse_value(text):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _grid_values(study, texts):
    if texts is None:
        return list(study.grid.values)
    texts = [part for text in texts for part in text.split(",") if part]  # `--values 4,8` as well as `4 8`
    kind = type(study.grid.choices[0])
    try:
        values = [kind(text) for text in texts]
    except ValueError:
        values = []
    if not values:
        raise UserError(f"--values: {study.grid.setting} takes {kind.__name__} values; choose from "
                        f"{', '.join(map(str, study.grid.choices))}")
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
    """Check every flag of a study's launch, before anything is written or the data is read, and return its ``Plan``,
    whose ``data_fingerprint`` ``fingerprint_data`` gives."""
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
    if options.search_minutes is not None and not 0 < options.search_minutes < math.inf:
        raise UserError(f"--search_minutes must be a positive number of minutes, got {options.search_minutes:g}")
    seeds = _run_seeds(study, args.seed, options.seeds)
    config_path = flags.get("model_config", os.path.join(SHIPPED_CONFIG_DIR, f"{study.model}.json"))
    model_config = load_model_config(config_path, study.model)
    if options.workers > 1 and not os.path.isfile(config_path):  # each worker reads it again, as this process did
        raise UserError(f"--model_config {config_path} is not a file (a pipe, as <(...) makes, is read once), and each "
                        f"of the {options.workers} workers reads it; save it to a file and pass that")
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
    if study.grid and study.grid.setting in {**flags, **given}:
        setting = study.grid.setting
        raise UserError(f"{study.name} varies {setting}; choose its values with --values, not "
                        f"{'--' + setting if setting in flags else '--set ' + setting}")
    held_model_keys = {key: value for key, value in given.items() if is_model_setting(study.model, key)}
    validate_model_config(study.model, {**model_config, **held_model_keys}, source="--set")
    if options.values is not None and not study.grid:
        raise UserError(f"--values: {study.name} is a search; it has no grid")
    if options.trials is not None and study.grid:
        raise UserError(f"--trials: {study.name} is a grid, which trains each of its settings once per seed; "
                        "choose them with --values")
    if options.search_minutes is not None and study.grid and options.name != "all":  # all: for each search
        raise UserError(f"--search_minutes: {study.name} is a grid, with no search to stop; choose its settings "
                        "with --values")
    values = _grid_values(study, options.values) if study.grid else []
    storage_kind(options.storage)
    return Plan(study=study, study_dir=os.path.join(options.out, study.name), train_argv=train_argv, given=given,
                model_config=model_config, seed=args.seed, seeds=seeds,
                values=values, trials=options.trials or study.trials,
                search_minutes=options.search_minutes if study.is_search else None,
                storage=options.storage, retry_failed=options.retry_failed)


def fingerprint_data(train_argv):
    """The ``data_fingerprint`` of the plans of a launch, read once the flags are checked: a missing copy is fetched
    (or refused), and ``--valid_size`` checked against it, before any worker starts or anything is written."""
    args = get_config_parser().parse_args(train_argv)
    data = load_cifar10(args.data_dir)
    check_valid_size(len(data.train_labels), args.valid_size)
    return data.fingerprint()


def _note_no_cuda(study, args):
    """Say on the console what each run says in its train.log: asked for CUDA (the default), it trains on the CPU."""
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        say(f"note: {no_cuda_said()}: the runs of {study.name} train on the CPU", file=sys.stderr)


def _note_cpu_cost(study, args):
    """Say before a ResNet18 or MLP-Mixer study starts on a CPU what one epoch cost on one, so that nobody
    waits days for ``run all`` on a laptop unwarned."""
    import torch

    on_cpu = args.device == "cpu" or not torch.cuda.is_available()
    if on_cpu and study.model in CPU_EPOCH_SECONDS:
        fp32, bf16 = AMX_CPU_EPOCH_SECONDS[study.model]
        say(f"note: {study.name} trains {study.model} on the CPU, where one training epoch of the full data took "
            f"{CPU_EPOCH_SECONDS[study.model]} s on this project's first 2-core machine, and an epoch {fp32} s on a "
            f"later one with AMX ({bf16} s with --precision bf16; docs/cpu.md); on a CPU only mlp_activation "
            "is practical: run this study on a GPU (--device cuda), or try it with fewer --epochs", file=sys.stderr)


def _note_precision(study, args):
    """Pass on the hint of a run's first line, which a study writes into each run's train.log, not the console:
    arithmetic faster than fp32 that ``--precision auto`` leaves unused on this processor."""
    import torch

    device = torch.device("cuda" if args.device == "cuda" and torch.cuda.is_available() else "cpu")
    precision = auto_precision(device) if args.precision == "auto" else args.precision
    hint = precision_hint(precision, device)
    if hint:
        say(f"note: the runs of {study.name} train in {precision}{hint}", file=sys.stderr)


def _note_unread_flags(plan, args):
    """Say on the console what each run's train.log warns: a flag given that the study's runs train without
    (``--weight_decay`` where ``resnet18_lr`` holds adam); not where a search tunes the flag that decides it."""
    tuned = {dimension.setting for dimension in plan.study.space} - set(plan.given)
    for line in unread_flag_warnings({**vars(args), **plan.given}, tuned):
        say(f"warning: in {plan.study.name}, {line}", file=sys.stderr)


def run_study(plan, options, argv):
    """Run the study of ``plan`` (its data fingerprinted) in this process, or in ``--workers`` worker processes
    started with ``argv``; returns the exit status."""
    study = plan.study
    storage, lock = open_storage(plan.storage, plan.study_dir)
    launched = is_launched_worker()  # then the launch says what the study is and how it ended
    try:
        optuna_study = open_study(plan, storage, lock)
        args = get_config_parser().parse_args(plan.train_argv)
        if not launched:
            say(f"study {study.name}: {study.question} Output in {plan.study_dir}")
            _note_no_cuda(study, args)
            _note_cpu_cost(study, args)
            _note_precision(study, args)
            _note_unread_flags(plan, args)
        if options.workers > 1:
            code = launch_workers(options.workers, argv, args.device)
        else:
            work(plan, optuna_study, lock)
            code = 0
        if not launched:
            # a disk that refused a worker's output most likely refuses this line too, which then says why
            say(f"study {study.name}: {summary(optuna_study)}{_ended_early(plan, optuna_study)}")
        if code == OUTPUT_REFUSED_STATUS:
            raise OutputRefused("a worker's write to it was refused")
        return code
    finally:
        close_storage(storage)


def _open_and_close(plan):
    """Open the study of ``plan`` (its data fingerprinted) as ``run_study`` does, which refuses one whose records
    differ from the plan (other flags, runs trained without a record), then close its storage."""
    storage, lock = open_storage(plan.storage, plan.study_dir)
    try:
        open_study(plan, storage, lock)
    finally:
        close_storage(storage)


def _ended_early(plan, optuna_study):
    """What the outcome line adds when this launch's --search_minutes or --trials stopped a search short of the
    budget that the summary counts against (the largest that a launch asked for)."""
    budget = optuna_study.user_attrs.get("trials", 0)
    searched = len(search_jobs(job_states(optuna_study.get_trials(deepcopy=False))))
    if not plan.study.is_search or searched >= budget:
        return ""
    if plan.search_minutes is not None and searched < plan.trials:
        return (f"; this launch's --search_minutes {plan.search_minutes:g} ended the search after {searched} "
                f"trial{'s' if searched > 1 else ''} (a rerun carries it on)")
    if plan.trials < budget:
        return f"; this launch's --trials {plan.trials} ended the search early (a larger --trials carries it on)"
    return ""


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
            print(f"  search: {study.trials} trials (--trials N; fewer when --search_minutes M runs out) over the "
                  "settings below, then the best configuration retrained and tested once per seed (--seeds N)")
        for dimension in study.space:
            print(f"  {dimension.setting}: {dimension.describe()}")


def _write_report(out, report_dir=None):
    from .report import build_report

    for path in build_report(out, report_dir):
        print(f"wrote {path}")


def _one_study_argv(argv, name):
    """The arguments of ``run all`` with ``name`` in place of the ``all`` that names the study (a flag's value may
    be ``all`` too, as in ``--out all``), for the workers that ``--workers N`` starts; a grid's go without
    ``--search_minutes``, which is for the searches of ``all`` and refused for a grid named alone."""
    options, train_argv = _parser().parse_known_args(argv)
    held = {"name": name}
    if STUDIES[name].grid:
        argv, held["search_minutes"] = _without_flag(argv, "--search_minutes"), None
    wanted = (argparse.Namespace(**{**vars(options), **held}), train_argv)
    candidates = ([*argv[:i], name, *argv[i + 1:]] for i, token in enumerate(argv) if token == "all")
    return next(candidate for candidate in candidates if _parser().parse_known_args(candidate) == wanted)


def _without_flag(argv, flag):
    """``argv`` without ``flag`` and its value (``--flag VALUE`` or ``--flag=VALUE``)."""
    kept, tokens = [], iter(argv)
    for token in tokens:
        if token == flag:
            next(tokens, None)
        elif not token.startswith(flag + "="):
            kept.append(token)
    return kept


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    options, train_argv = _parser().parse_known_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if options.command != "run" and train_argv:  # only a run passes flags on, to main.py
            raise UserError(f"unrecognized arguments: {' '.join(train_argv)}; see python -m studies {options.command} "
                            "--help")
        if options.command == "list":
            _list()
            return 0
        if os.path.exists(options.out) and not os.path.isdir(options.out):
            raise UserError(f"--out {options.out} is a file, not a folder; give the folder of the studies")
        if options.command == "report":
            _write_report(options.out, options.report_dir)
            return 0
        if options.command == "status":
            print_status(options.out, options.storage)
            return 0
        if options.name == "all":
            if options.values or options.trials:
                raise UserError("--values and --trials apply to one study; run the studies one by one")
            models = sorted({study.model for study in STUDIES.values()})
            if ("model_config" in given_flags(train_argv, RUN_HELP) or options.set) and len(models) > 1:
                raise UserError(f"--model_config and --set apply to one model, and the studies train "
                                f"{', '.join(models)}; run the studies one by one")
            # every study's flags, before the first study starts, not when a later one would
            plans = [make_plan(study, options, train_argv) for study in STUDIES.values()]
            fingerprint = fingerprint_data(train_argv)
            plans = [replace(plan, data_fingerprint=fingerprint) for plan in plans]
            for plan in plans:  # and each study's records against them: one made with other flags is refused now
                _open_and_close(plan)
            for plan in plans:
                name = plan.study.name
                code = run_study(plan, options, _one_study_argv(argv, name))
                if code != 0:
                    print(f"study {name}: a worker exited with status {code}, so the studies after it did not "
                          "start; rerun the same command to resume", file=sys.stderr)
                    return code
            _write_report(options.out)
            return 0
        plan = make_plan(STUDIES[options.name], options, train_argv)
        return run_study(replace(plan, data_fingerprint=fingerprint_data(train_argv)), options, argv)
    except UserError as exc:
        if isinstance(exc, OutputRefused) and is_launched_worker():
            # said once by the launch, not by each of its workers; their lines are flushed as said (``say``), so
            # none is left for the exit's flush to find refused and say again
            return OUTPUT_REFUSED_STATUS
        say(f"error: {exc}", file=sys.stderr)
        return 2
    except optuna.exceptions.StorageInternalError as exc:
        say(f"error: {refused_write(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if options.command != "run" and reader_left():  # a listing read in part (| head): nothing left undone
            return 0
        say("\ninterrupted: rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    set_up_command_line()
    exit_after_output(main())

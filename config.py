"""Command-line flags of ``main.py``: the template's, with their defaults, and what the runner adds."""
import argparse
import math
import os
import re

import torch

from training.augmentation import AUGMENTATIONS, MIXES
from training.errors import CommandLineParser, path_flag
from training.optim import SCHEDULES, unread_flags


DATA_DIR = "./data"
DATA_DIR_HELP = "folder holding cifar-10-batches-py/ (or cifar-10-python.tar.gz, or where to download it)."


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each flag's default, except where there is none to name: an unset value or an off switch
    (``(default: None)``, ``(default: False)`` say nothing); a description is shown as written (the tools' and
    the studies' are their docstrings, laid out by hand)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


def get_config_parser():
    parser = CommandLineParser(
        description="Train an MLP, a ResNet18 or an MLP-Mixer on CIFAR-10 and write results.json.",
        formatter_class=HelpFormatter, help_command="python main.py --help")

    template = parser.add_argument_group("template flags (defaults as in the course template)")
    template.add_argument("--batch_size", type=int, default=128, help="batch size for training.")
    template.add_argument("--model", type=str, default="mlp", choices=["mlp", "resnet18", "mlpmixer"],
                          help="name of the model to run.")
    template.add_argument("--model_config", type=path_flag, default="./model_configs/mlp.json",
                          help="path to the model configuration (a JSON file).")
    template.add_argument("--epochs", type=int, default=15, help="number of epochs for training.")
    template.add_argument("--optimizer", type=str, default="adamw", choices=["sgd", "momentum", "adam", "adamw"],
                          help="choice of optimizer (adam is used without weight decay, as in the template).")
    template.add_argument("--lr", type=float, default=1e-3, help="learning rate for the optimizer.")
    template.add_argument("--momentum", type=float, default=0.9, help="momentum for --optimizer momentum, in [0, 1).")
    template.add_argument("--weight_decay", type=float, default=5e-4, help="weight decay (not used by adam).")
    template.add_argument("--logdir", type=path_flag, default=None,
                          help="folder for results.json, the checkpoint and visualisations; none are written "
                               "without it.")
    template.add_argument("--seed", type=int, default=42, help="seed of every random choice: split, init, batches.")
    template.add_argument("--device", type=str, choices=["cpu", "cuda"], default="cuda",
                          help="device to run on; cuda falls back to cpu with a warning when unavailable.")
    template.add_argument("--print_every", type=int, default=80,
                          help="refresh the progress bar's loss every this many iterations.")
    template.add_argument("--visualize", action="store_true",
                          help="save the model's first-layer weights as images into --logdir "
                               "(resnet18 and mlpmixer).")

    runner = parser.add_argument_group("runner flags (beyond the template)")
    runner.add_argument("--data_dir", type=path_flag, default=DATA_DIR, help=DATA_DIR_HELP)
    runner.add_argument("--pipeline", type=str, default="tensor", choices=["tensor", "torchvision"],
                        help="tensor: the data set as one uint8 tensor on the training device, batched "
                             "augmentation; torchvision: the template's DataLoader with PIL transforms.")
    runner.add_argument("--num_workers", type=int, default=4,
                        help="DataLoader worker processes for --pipeline torchvision (the template's 4).")
    runner.add_argument("--eval_batch_size", type=int, default=1000,
                        help="batch size for validation and test (no effect on the results).")
    runner.add_argument("--valid_size", type=int, default=5000,
                        help="training images held out for validation, disjoint from the rest.")
    runner.add_argument("--resume", action="store_true",
                        help="continue the run whose checkpoint is in --logdir, with the same settings; --epochs "
                             "may grow with a constant learning rate, not under a schedule.")
    runner.add_argument("--no_progress", action="store_true", help="hide the per-iteration progress bars.")

    recipe = parser.add_argument_group("training recipe (defaults reproduce the template)")
    recipe.add_argument("--lr_schedule", type=str, default="constant", choices=list(SCHEDULES),
                        help="constant: the template's fixed rate; cosine / onecycle: linear warm-up over "
                             "--warmup_fraction of the steps, then a cosine / linear decay to zero.")
    recipe.add_argument("--warmup_fraction", type=float, default=0.2,
                        help="share of all steps spent warming up (cosine and onecycle).")
    recipe.add_argument("--label_smoothing", type=float, default=0.0,
                        help="label smoothing: the share of each label's mass spread uniformly over the classes.")
    recipe.add_argument("--augment", type=str, default="template", choices=list(AUGMENTATIONS),
                        help="training augmentation. template: random horizontal flip and RandomResizedCrop "
                             "(scale 0.8-1.0), as the course template; padcrop: flip and a random crop of the "
                             "image padded by 4 mirrored pixels; padcrop_cutout: padcrop, then a random 16x16 "
                             "square set to the mean.")
    recipe.add_argument("--mix", type=str, default="none", choices=list(MIXES),
                        help="mix each training image with a random partner from its batch, the loss weighing "
                             "both labels by a weight drawn uniformly per batch: mixup blends the images, cutmix "
                             "pastes a box of the partner; training accuracy counts each image's own label.")
    recipe.add_argument("--tta", type=str, default="none", choices=["none", "flip"],
                        help="test-time augmentation of validation and test: flip averages the logits of each "
                             "image and its mirror image.")

    speed = parser.add_argument_group("GPU fast path (on a CPU the auto settings only give the ResNet the "
                                      "channels-last layout; each can be turned off)")
    speed.add_argument("--precision", type=str, default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                       help="auto: bf16 autocast on a CUDA GPU with native bf16 (compute capability 8.0+: "
                            "A100, L4, H100...), fp32 on older GPUs (T4, V100) and on the CPU. fp16: autocast "
                            "with dynamic loss scaling, for the tensor cores of GPUs without bf16.")
    speed.add_argument("--channels_last", type=str, default="auto", choices=["auto", "on", "off"],
                       help="auto: channels-last memory layout for resnet18 on a CPU, on a CUDA GPU with "
                            "native bf16, or on any CUDA GPU with --precision fp16.")
    speed.add_argument("--cuda_graph", type=str, default="auto", choices=["auto", "on", "off"],
                       help="auto: on CUDA with --pipeline tensor, record the whole training step (batch "
                            "augmentation included) in a CUDA graph once and replay it; off: eager steps.")
    speed.add_argument("--compile", action="store_true",
                       help="torch.compile the model for full training batches, fusing its elementwise work "
                            "(normalisation, activations, casts); inside the CUDA graph when that is on. "
                            "Compiling costs tens of seconds at the start of a run; also works on a CPU.")
    return parser


def given_flags(argv, help_command):
    """The ``main.py`` flags that ``argv`` sets, with their parsed values; a bad one exits as ``main.py`` does,
    pointing to ``help_command`` (a command that passes its unknown flags on names its own help too)."""
    parser = get_config_parser()
    parser.help_command = help_command
    unset = object()  # not a string, so argparse does not convert it as it would a default
    parser.set_defaults(**{dest: unset for dest in vars(parser.parse_args([]))})
    return {key: value for key, value in vars(parser.parse_args(argv)).items() if value is not unset}


MAX_SEED = 2**32 - 1  # numpy.random.seed refuses anything outside [0, 2**32 - 1]
OLDEST_TORCH = (2, 4)  # the oldest release the whole test suite passes with (docs/compatibility.md)


def torch_release(version):
    """``(major, minor)`` of a torch version string such as ``2.4.1+cu121`` or ``2.5.0a0+git1234``."""
    major, minor = re.match(r"(\d+)\.(\d+)", version).groups()
    return int(major), int(minor)


def torch_too_old():
    """What is wrong with the installed torch for the runner, the studies and the tools, or ``None``."""
    if torch_release(torch.__version__) < OLDEST_TORCH:
        return (f"torch {torch.__version__} is older than {'.'.join(map(str, OLDEST_TORCH))}, the oldest "
                "release this runner is tested with; upgrade it: pip install -r requirements.txt")
    return None


def unread_flag_warnings(settings, tuned=()):
    """A line for each flag in ``settings`` (a run's flags by name) set away from its default that the run trains
    without (``--weight_decay`` with adam), so that no result is taken for that flag's; none where the flag that
    decides it is ``tuned`` (by a search, some of whose runs read the flag)."""
    parser = get_config_parser()
    return [f"--{flag} {settings[flag]} is not used with --{by} {settings[by]}: {why}"
            for flag, (by, why) in unread_flags(settings).items()
            if by not in tuned and settings[flag] != parser.get_default(flag)]


def check_args(args):
    """Problems with flag values that argparse's types cannot see, and a torch too old to run them; returns
    a list of messages."""
    too_old = torch_too_old()
    problems = [too_old] if too_old else []
    for name in ("batch_size", "epochs", "print_every", "eval_batch_size", "valid_size"):
        if getattr(args, name) < 1:
            problems.append(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not 0 <= args.seed <= MAX_SEED:
        problems.append(f"--seed must be between 0 and {MAX_SEED} (numpy's seed range), got {args.seed}")
    if not 0 < args.lr < math.inf:
        problems.append(f"--lr must be a positive finite number, got {args.lr}")
    if not 0 <= args.weight_decay < math.inf:
        problems.append(f"--weight_decay must be finite and not negative, got {args.weight_decay}")
    if not 0.0 <= args.momentum < 1.0:  # at 1 or more the velocity never decays: every past gradient adds up
        problems.append(f"--momentum must be in [0, 1), got {args.momentum}")
    if args.num_workers < 0:
        problems.append(f"--num_workers must not be negative, got {args.num_workers}")
    if not 0.0 <= args.warmup_fraction < 1.0:
        problems.append(f"--warmup_fraction must be in [0, 1), got {args.warmup_fraction}")
    if not 0.0 <= args.label_smoothing < 1.0:
        problems.append(f"--label_smoothing must be in [0, 1), got {args.label_smoothing}")
    if args.logdir is not None and os.path.exists(args.logdir) and not os.path.isdir(args.logdir):
        problems.append(f"--logdir {args.logdir} is a file, not a folder; give a folder path")
    if args.logdir is None and args.resume:
        problems.append("--resume needs --logdir, the folder of the run to continue")
    if args.logdir is None and args.visualize and args.model != "mlp":  # the mlp draws nothing: it gets a warning
        problems.append("--visualize needs --logdir, the folder the images are saved into")
    return problems

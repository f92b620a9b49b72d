"""Train one model on CIFAR-10: ``python main.py --model resnet18 --model_config model_configs/resnet18.json``.

``train`` and ``evaluate`` are importable from here, as in the course template.
"""
import os
import sys
import traceback

from config import get_config_parser
from training.devices import out_of_memory
from training.engine import epochs_kept, evaluate, fit, train
from training.errors import UserError, counted, exit_after_output, set_up_command_line
from training.persistence import CHECKPOINT_FILE

__all__ = ["train", "evaluate", "main"]

EXIT_CODES = {"completed": 0, "diverged": 3, "interrupted": 130}


def main(argv=None):
    args = get_config_parser().parse_args(argv)
    try:
        results = fit(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the first epoch or while visualising (fit handles one in training and testing)
        print("\ninterrupted", file=sys.stderr)
        return EXIT_CODES["interrupted"]
    except Exception as exc:  # a crash: its traceback, or one line for a device out of memory; and what was kept
        kept = epochs_kept(exc)
        memory = out_of_memory(exc)
        if memory is not None:  # a batch too large for this device: the user's to change
            resume = ("" if kept is None else f"; or, to keep the {counted(kept, 'finished epoch')} that results.json "
                      "keeps, rerun with the same flags and --resume (and a smaller --eval_batch_size if the "
                      "validation or test ran out)")
            print(f"error: {memory}; start again with a smaller --batch_size (training) or --eval_batch_size "
                  f"(validation and test), or a smaller model config{resume}", file=sys.stderr)
            return 2
        if kept is None:
            raise
        traceback.print_exc()
        print(f"the run failed after {counted(kept, 'finished epoch')}, which results.json keeps (status failed, with "
              "the error); rerun with the same flags and --resume to continue from them", file=sys.stderr)
        return 1
    if results["status"] == "interrupted" and args.logdir:  # said here: a study or a tool resumes its own way
        if not os.path.isfile(os.path.join(args.logdir, CHECKPOINT_FILE)):  # stopped in its first epoch
            print("nothing to resume: rerun with the same flags, without --resume, to start again", file=sys.stderr)
        else:
            left = "evaluate the test set" if results["epochs_completed"] >= args.epochs else "continue"
            print(f"rerun with the same flags and --resume to {left}", file=sys.stderr)
    return EXIT_CODES[results["status"]]


if __name__ == "__main__":
    set_up_command_line()
    exit_after_output(main())

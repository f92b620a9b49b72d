#!/usr/bin/env bash
# The one device call that measures what issues 3 and 4 still lack, most needed first. Each step has its own
# time limit, so a step that overruns costs only itself, and no step runs past the end of the call (CALL_SECONDS,
# the device call's timeout_s): a step's limit is cut to what the call has left, so the last step gets the time
# that the steps before it saved. Each step's output goes to the console and to $OUT/<step>.txt. From the
# repository root on a GPU machine (the device tool: carry .devdata and .whl, timeout_s 600, then give the
# machine back):
#
#     bash tools/device_check.sh                     # the four default steps
#     bash tools/device_check.sh mlpmixer_target     # a step by name (this one is in no default: 360 s alone)
#     bash tools/device_check.sh compile nan_hunt resnet18_target studies_1_3   # the first call of 2026-12-04
#
# The steps compile, nan_hunt and studies_1_3 were measured on an H200 on 2026-12-04 (docs/*_h200_2026-12-04.txt)
# and stay here to measure them again on another card or torch.
#
# .devdata/ holds the course's CIFAR-10 copy (cifar10_jpeg_q75.npz and make_cifar10.py from ../shared/data);
# .whl/ holds wheels of Optuna and its dependencies for the device's Python 3.12, which has torch, numpy and tqdm
# but not Optuna (5.6 MB; the device's own copies of the packages removed below are kept, as in the run of
# 2026-12-04, rather than shadowed by older or newer ones). Both are git-ignored. To make .whl:
#
#     pip download optuna==5.1.0 --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#         --dest .whl && rm .whl/numpy-* .whl/tqdm-* .whl/packaging-* .whl/typing_extensions-* .whl/markupsafe-* \
#         .whl/pyyaml-*
set -u
DEFAULT_STEPS="compile_parity resnet18_target resnet18_target_b128 cuda_error"
ALL_STEPS="compile nan_hunt compile_parity resnet18_target resnet18_target_b128 studies_1_3 mlpmixer_target cuda_error"
STEPS=${*:-$DEFAULT_STEPS}
for name in $STEPS; do  # refused before anything runs: a mistyped step must not cost a device start
    [[ " $ALL_STEPS " == *" $name "* ]] || { echo "error: unknown step $name; choose from $ALL_STEPS" >&2; exit 2; }
done
OUT=${OUT:-device_check_logs}
CALL_SECONDS=${CALL_SECONDS:-600}
DATA=.devdata/data
mkdir -p "$OUT"

for wheel in .whl/*.whl; do  # a wheel is a zip archive: unpacked, it is installed (the device may lack pip)
    [ -f "$wheel" ] && { python -m zipfile -e "$wheel" /tmp/site || exit 1; }
done
export PYTHONPATH=/tmp/site
export PYTHONUNBUFFERED=1  # each line reaches the step's log when printed: the call's limit kills what is buffered
python -c "import optuna" 2>/dev/null || echo "== no Optuna (.whl missing?): the studies_1_3 step will fail; see the header"
python .devdata/make_cifar10.py "$DATA" > /dev/null || exit 1
echo "== data ready after $SECONDS s of the call"

step() {  # step SECONDS NAME COMMAND...: runs COMMAND when NAME is one of the steps asked for
    local seconds=$1 name=$2
    shift 2
    [[ " $STEPS " == *" $name "* ]] || return 0
    local left=$((CALL_SECONDS - SECONDS - 25))  # 15 s for the KILL after a step's TERM, 10 s for the rest
    [ "$seconds" -le "$left" ] || seconds=$left
    if [ "$seconds" -le 0 ]; then
        echo "== $name: skipped, $SECONDS s into a call of $CALL_SECONDS s"
        return 0
    fi
    echo "== $name (at most $seconds s): $*"
    timeout -k 15 "$seconds" "$@" 2>&1 | tee "$OUT/$name.txt"  # SIGTERM stops a tool as Ctrl-C; KILL 15 s on
    local status=${PIPESTATUS[0]}
    if [ "$status" = 124 ]; then
        echo "== $name: stopped at its limit of $seconds s, $SECONDS s into the call"
    else
        echo "== $name: exit status $status, $SECONDS s into the call"
    fi
}

# issue 3: does torch.compile bring ResNet18 to 1.0 s and the MLP-Mixer to 0.8 s per epoch, with the same losses?
step 170 compile python -m tools.gpu_check --data_dir "$DATA" --sections compile --models resnet18,mlpmixer
# issue 3: does any captured MLP-Mixer step give a non-finite loss over a whole epoch of full batches?
step 60 nan_hunt python -m tools.gpu_check --data_dir "$DATA" --sections tracking --models mlpmixer --steps 351
# issue 3: 15 epochs of the default recipe compiled, fast and eager fp32: test accuracy within one point?
step 330 compile_parity python -m tools.gpu_check --data_dir "$DATA" --sections parity --parity_compiled \
    --models resnet18,mlpmixer
# issue 4: ResNet18 at 93% test accuracy from at most 60 s of training: the recipe, then the same at batch 128 (2.5
# times the steps; 42 epochs fit the budget at the 11.8 s first and 1.10 s later epochs measured on 2026-11-27). The
# two are compared by their validation accuracy, which each run's log prints
step 120 resnet18_target python -m tools.check_targets --data_dir "$DATA" --models resnet18
step 120 resnet18_target_b128 python -m tools.check_targets --data_dir "$DATA" --models resnet18 --batch_size 128 \
    --lr 0.1 --epochs 42
# issue 4: studies 1-3 in under 4 minutes (each study's time is printed as it ends); a limit above the target,
# so that a time near 4 minutes is measured rather than cut off, as far as the steps before leave time. Its
# dozens of run files stay off $OUT, of which the device tool brings back only 8 files: the step logs come first
step 300 studies_1_3 python -m tools.time_studies --data_dir "$DATA" --out "/tmp/device_check_studies_$$"
# issue 4: the MLP-Mixer with 4x4 patches at 87% test accuracy from at most 5 minutes of training
step 360 mlpmixer_target python -m tools.check_targets --data_dir "$DATA" --models mlpmixer
# studies/worker.py: does a CUDA error that a run leaves (a device-side assert) stop the worker in one line?
step 60 cuda_error python -m tools.cuda_error_check

"""Which device a run trains on (a GPU that this PyTorch has no kernels for is refused), and what the fast path's
``auto`` flags become there: precision, memory layout and the CUDA graph, from what the GPU or the CPU computes
natively; and how many CPUs this process may use (for DataLoader workers and the study workers' threads); and which
errors say that a device ran out of memory."""
import os
import platform
import re
import shutil
import subprocess
import warnings

import torch

from .errors import UserError


def resolve_device(requested):
    if requested == "cuda" and not torch.cuda.is_available():
        warnings.warn(f"{no_cuda_said()}: running on the CPU (pass --device cpu to silence this)")
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        _check_kernels_run(device)
    return device


def no_cuda_said():
    """``CUDA is not available``, and the fix where a machine has an NVIDIA GPU but PyTorch is a CPU-only build, as
    PyPI's torch for Windows is: ``pip install -r requirements.txt`` there gives a student's GPU laptop that build."""
    if torch.version.cuda is None and not torch.version.hip and shutil.which("nvidia-smi"):
        return (f"CUDA is not available to this CPU-only PyTorch ({torch.__version__}; PyPI's torch for Windows is "
                "CPU-only), though this machine has an NVIDIA GPU (nvidia-smi is installed); install a CUDA build of "
                "torch (https://pytorch.org/get-started/locally/) to train on it")
    return "CUDA is not available"


def _launch_a_kernel(device):
    torch.zeros(1, device=device).add_(1).item()


def _check_kernels_run(device):
    """Refuse, in one line, a GPU that this PyTorch build has no kernels for: CUDA finds it, and then its first
    operation fails. Kaggle's P100 (compute capability 6.0) is one, under the CUDA 12.8 build that Kaggle installs;
    torch 2.14.1+cu130, the build tested here, starts at 7.5, after the V100 (7.0). Torch's warnings at CUDA's start
    are shown only where the GPU works: the line says it all."""
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        try:
            _launch_a_kernel(device)
        except RuntimeError as exc:
            if "no kernel image is available" not in str(exc):
                raise
            name, capability = torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device)
            built_for = " ".join(torch.cuda.get_arch_list())
            raise UserError(f"this PyTorch {torch.__version__} has no CUDA kernels for {name} (compute capability "
                            f"{capability[0]}.{capability[1]}; it was built for {built_for}): train on a GPU that it "
                            "supports (on Kaggle, GPU T4 x2 rather than P100), install a PyTorch build for this GPU "
                            "(https://pytorch.org/get-started/locally/), or pass --device cpu") from None
    for warning in said:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def usable_cpus():
    """The CPUs this process may run on (its affinity mask, where the system has one, as under ``taskset`` or a
    batch system's CPU binding), as torch counts them; None where Python cannot tell."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def has_native_bf16(device):
    """Whether this CUDA GPU computes in bf16 on its tensor cores (compute capability 8.0 or newer: A100,
    L4, H100...). Older GPUs (Colab's T4, V100) only emulate it: PyTorch gives cuDNN bf16 convolutions
    from 8.0 on, so there bf16 would be slower than fp32."""
    return bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8


def _cpu_bf16_support():
    """torch's answers on this x86 CPU's bf16 arithmetic (AVX512-BF16, AMX): ``None`` each where this torch has
    no such check; an empty list on another architecture, where torch cannot tell."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return [check() if check is not None else None for check in checks]


def cpu_emulates_bf16():
    """Whether this is an x86 CPU without bf16 arithmetic (no AVX512-BF16, no AMX), where PyTorch emulates
    bf16: an MLP epoch took 9.7x as long as in fp32 on this project's first CPU. False where torch cannot tell
    (another architecture, a torch without these checks)."""
    support = _cpu_bf16_support()
    return bool(support) and all(answer is False for answer in support)


def cpu_computes_bf16():
    """Whether this x86 CPU has bf16 arithmetic (AVX512-BF16 or AMX): on a later 2-core machine of this project,
    with AMX, ``--precision bf16`` trained each model 1.3x to 2.5x as fast per epoch as fp32, and on an AMD EPYC
    with AVX512-BF16 alone 1.5x (the MLP, per epoch) to 2.1x (the MLP-Mixer, per step) as fast (docs/cpu.md)."""
    return any(_cpu_bf16_support())


def resolve_fast_path(args, device):
    """Turn the ``auto`` fast-path flags into decisions for this device, in place on ``args``.

    On a CUDA GPU with native bf16: bf16 autocast, channels-last for the ResNet, and the CUDA-graph
    step with the tensor pipeline. On an older GPU: the graph in fp32, with the ResNet's default layout,
    or channels-last with ``--precision fp16`` (the layout pays off with tensor-core convolutions).
    On a CPU: fp32 and eager steps (graphs are never possible there), and channels-last for the ResNet,
    which trained faster in it on this project's CPU (``tools.layout_benchmark``).
    """
    cuda = device.type == "cuda"
    native_bf16 = cuda and has_native_bf16(device)
    if args.precision == "bf16" and cuda and not native_bf16:
        warnings.warn(f"{torch.cuda.get_device_name(device)} has no native bf16 (compute capability "
                      f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}): bf16 is emulated there "
                      "and slower than fp32; use --precision auto or fp32")
    if args.precision == "fp16" and not cuda:
        warnings.warn("--precision fp16 is for CUDA GPUs: a CPU usually emulates fp16, much slower than fp32")
    if args.precision == "bf16" and not cuda and cpu_emulates_bf16():
        warnings.warn("--precision bf16: this CPU has no AVX512-BF16 or AMX, so bf16 is emulated there, much slower "
                      "than fp32; use --precision auto or fp32")
    if args.precision == "auto":
        args.precision = auto_precision(device)
    args.channels_last = args.channels_last == "on" or (args.channels_last == "auto" and args.model == "resnet18"
                                                         and (native_bf16 or not cuda or args.precision == "fp16"))
    wanted = args.cuda_graph == "on" or args.cuda_graph == "auto"
    possible = cuda and args.pipeline == "tensor"
    if args.cuda_graph == "on" and not possible:
        warnings.warn("--cuda_graph on needs CUDA and --pipeline tensor: running eager steps")
    args.cuda_graph = bool(wanted and possible)
    if cuda:
        torch.backends.cudnn.benchmark = True


def auto_precision(device):
    """What ``--precision auto`` trains in on ``device``: bf16 on a CUDA GPU with native bf16, fp32 elsewhere."""
    return "bf16" if device.type == "cuda" and has_native_bf16(device) else "fp32"


def precision_hint(precision, device):
    """An fp32 run is told of the faster arithmetic its processor has, which ``auto`` leaves unused: bf16 on an x86
    CPU with AVX512-BF16 or AMX (``auto`` keeps a CPU in fp32, as the template trains, and many CPUs only emulate
    bf16), and fp16 on a CUDA GPU with tensor cores but without native bf16 (compute capability 7.x: Colab's T4, a
    V100), where no run of this project has measured whether fp16 beats fp32."""
    if precision != "fp32":
        return ""
    if device.type == "cpu" and cpu_computes_bf16():
        return " (this CPU has bf16 arithmetic: --precision bf16 may train faster)"
    if device.type == "cuda" and not has_native_bf16(device) and torch.cuda.get_device_capability(device)[0] >= 7:
        return " (this GPU's tensor cores compute in fp16: --precision fp16 may train faster)"
    return ""


CPUINFO = "/proc/cpuinfo"


def _cpu_model():
    """This CPU's model as the system names it (``AMD EPYC``, ``Apple M2``...), since the processor decides how fast
    a CPU run trains; None where the system does not say (Linux on ARM names no model)."""
    system = platform.system()
    if system == "Linux":
        try:
            with open(CPUINFO, encoding="utf-8", errors="replace") as f:
                named = (value for key, _, value in (line.partition(":") for line in f) if key.strip() == "model name")
                return " ".join(next(named, "").split()) or None
        except OSError:
            return None
    if system == "Darwin":
        try:
            said = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        return said.stdout.strip() or None
    return platform.processor() or None  # Windows: "Intel64 Family 6 Model 158 Stepping 10, GenuineIntel"


def describe_device(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"cpu ({_cpu_model() or platform.machine()}, {threads} thread{'' if threads == 1 else 's'})"


def device_identity(device):
    """Which processor of this host ran: ``cpu``, or the GPU's UUID; None where torch does not give it (2.4 does
    not; a CUDA index cannot stand in for it, since a batch system may show each job its GPU as index 0).
    Runs with the same host and identity that trained at the same time shared it, and their seconds show it."""
    if device.type != "cuda":
        return "cpu"
    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    return None if uuid is None else f"GPU-{uuid}"


# torch raises the CPU allocator's refusal as a plain RuntimeError; the first wording is POSIX's, the second Windows'
_CPU_ALLOCATOR_REFUSED = re.compile(
    r"DefaultCPUAllocator: (?:can't allocate memory|not enough memory): you tried to allocate (\d+) bytes")


def out_of_memory(exc):
    """What a device that ran out of memory says in ``exc``, in a sentence or three: the GPU's request and what it
    had, or the size that the CPU's allocator was refused; None for any other error."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return ". ".join(str(exc).split(". ")[:3])  # how much it asked for and had; then torch's tuning advice
    refused = _CPU_ALLOCATOR_REFUSED.search(str(exc)) if isinstance(exc, RuntimeError) else None
    if refused is None:
        return None
    return f"CPU out of memory. Tried to allocate {_binary_size(int(refused.group(1)))}, which the system refused"


def _binary_size(size):
    """``size`` bytes in the unit that torch's CUDA message would use: ``100.00 MiB``, ``9.00 GiB``."""
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size} bytes"

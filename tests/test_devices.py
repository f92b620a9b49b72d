"""The device a run trains on (the fallback from CUDA), how the fast path's flags resolve on each device (a CPU,
GPUs with and without native bf16), what they warn of or hint at, and the command line running them on the CPU."""
import argparse
import json
import os
import warnings

import pytest
import torch

import main
from training import devices, engine


def _args(**overrides):
    base = dict(precision="auto", channels_last="auto", cuda_graph="auto", pipeline="tensor", model="resnet18")
    base.update(overrides)
    return argparse.Namespace(**base)


def _pretend_cpu(monkeypatch, machine, avx512_bf16, amx):
    monkeypatch.setattr(devices.platform, "machine", lambda: machine)
    for name, answer in (("_is_avx512_bf16_supported", avx512_bf16), ("_is_amx_tile_supported", amx)):
        if answer is None:
            monkeypatch.delattr(torch.cpu, name, raising=False)
        else:
            monkeypatch.setattr(torch.cpu, name, lambda answer=answer: answer, raising=False)


def _pretend_cuda_gpu(monkeypatch, capability, name):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # resolve_fast_path turns it on for CUDA


def test_fast_path_flags_resolve_per_device():
    cpu = _args()
    devices.resolve_fast_path(cpu, torch.device("cpu"))
    assert (cpu.precision, cpu.channels_last, cpu.cuda_graph) == ("fp32", True, False)  # oneDNN's faster layout
    for model in ("mlp", "mlpmixer"):
        other = _args(model=model)
        devices.resolve_fast_path(other, torch.device("cpu"))
        assert (other.precision, other.channels_last, other.cuda_graph) == ("fp32", False, False)
    plain = _args(channels_last="off")
    devices.resolve_fast_path(plain, torch.device("cpu"))
    assert plain.channels_last is False
    forced = _args(precision="bf16", channels_last="on", model="mlp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a CPU that emulates bf16 says so (below)
        devices.resolve_fast_path(forced, torch.device("cpu"))
    assert (forced.precision, forced.channels_last, forced.cuda_graph) == ("bf16", True, False)
    with pytest.warns(UserWarning, match="--cuda_graph on needs CUDA"):
        devices.resolve_fast_path(_args(cuda_graph="on"), torch.device("cpu"))
    with pytest.warns(UserWarning, match="--precision fp16 is for CUDA GPUs"):
        devices.resolve_fast_path(_args(precision="fp16"), torch.device("cpu"))


@pytest.mark.parametrize("machine, avx512_bf16, amx, warned", [
    ("x86_64", False, False, True),  # this project's CPU: an MLP epoch took 9.7x as long in bf16
    ("x86_64", True, False, False),
    ("AMD64", False, True, False),  # Windows' name
    ("AMD64", False, False, True),
    ("aarch64", False, False, False),  # torch's checks are for x86: no claim elsewhere
    ("x86_64", None, None, False),  # a torch without the checks
])
def test_bf16_on_a_cpu_that_emulates_it_is_warned_of(monkeypatch, machine, avx512_bf16, amx, warned):
    _pretend_cpu(monkeypatch, machine, avx512_bf16, amx)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        devices.resolve_fast_path(_args(precision="bf16"), torch.device("cpu"))
    assert [str(w.message) for w in caught] == (["--precision bf16: this CPU has no AVX512-BF16 or AMX, so bf16 is "
                                                 "emulated there, much slower than fp32; use --precision auto or fp32"]
                                                if warned else [])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a run that does not ask for bf16 is not warned of it
        for precision in ("auto", "fp32"):
            devices.resolve_fast_path(_args(precision=precision), torch.device("cpu"))


@pytest.mark.parametrize("machine, avx512_bf16, amx, hinted", [
    ("x86_64", True, True, True),  # a later CPU of this project: bf16 epochs 1.3x to 2.5x as fast (docs/cpu.md)
    ("x86_64", False, True, True),
    ("AMD64", True, False, True),
    ("x86_64", False, False, False),  # the first CPU: bf16 emulated, 9.7x as slow
    ("aarch64", True, True, False),  # torch's checks are for x86: no claim elsewhere
    ("x86_64", None, None, False),  # a torch without the checks
])
def test_an_fp32_run_on_a_cpu_with_bf16_arithmetic_is_told_of_bf16(monkeypatch, machine, avx512_bf16, amx, hinted):
    _pretend_cpu(monkeypatch, machine, avx512_bf16, amx)
    hint = " (this CPU has bf16 arithmetic: --precision bf16 may train faster)"
    assert devices.precision_hint("fp32", torch.device("cpu")) == (hint if hinted else "")
    assert devices.precision_hint("bf16", torch.device("cpu")) == ""


@pytest.mark.parametrize("capability, name, hinted", [
    ((7, 5), "Tesla T4", True),  # Colab's free GPU: fp16 tensor cores, bf16 only emulated
    ((7, 0), "Tesla V100", True),
    ((6, 0), "Tesla P100", False),  # no tensor cores
    ((8, 0), "NVIDIA A100", False),  # auto trains it in bf16; fp32 there was asked for
    ((9, 0), "NVIDIA H100", False),
])
def test_an_fp32_run_on_a_gpu_whose_tensor_cores_compute_fp16_only_is_told_of_fp16(monkeypatch, capability, name,
                                                                                    hinted):
    _pretend_cuda_gpu(monkeypatch, capability, name)
    _pretend_cpu(monkeypatch, "x86_64", True, True)  # the host's CPU has no say in a GPU run
    hint = " (this GPU's tensor cores compute in fp16: --precision fp16 may train faster)"
    assert devices.precision_hint("fp32", torch.device("cuda")) == (hint if hinted else "")
    for precision in ("fp16", "bf16"):
        assert devices.precision_hint(precision, torch.device("cuda")) == ""
    resolved = _args()
    devices.resolve_fast_path(resolved, torch.device("cuda"))
    assert devices.precision_hint(resolved.precision, torch.device("cuda")) == (hint if hinted else "")


def test_the_runs_first_line_gives_the_bf16_hint_beside_its_precision(monkeypatch, capsys, run_args):
    _pretend_cpu(monkeypatch, "x86_64", False, True)
    assert main.main(run_args("mlp", epochs=1)) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "tensor pipeline, fp32 (this CPU has bf16 arithmetic: --precision bf16 may train faster), CUDA graph off" \
        in first


@pytest.mark.parametrize("capability, name, precision, channels_last", [
    ((9, 0), "NVIDIA H100", "bf16", True),
    ((8, 9), "NVIDIA L4", "bf16", True),
    ((7, 5), "Tesla T4", "fp32", False),  # Colab's free GPU: bf16 only emulated there
    ((7, 0), "Tesla V100", "fp32", False),
])
def test_auto_precision_is_bf16_only_on_gpus_with_native_bf16(monkeypatch, capability, name, precision,
                                                               channels_last):
    _pretend_cuda_gpu(monkeypatch, capability, name)
    _pretend_cpu(monkeypatch, "x86_64", False, False)  # a host CPU that emulates bf16 has no say in a GPU run
    args, forced, half = _args(), _args(precision="bf16"), _args(precision="fp16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto warns of nothing, nor fp16, nor bf16 where it is native
        devices.resolve_fast_path(args, torch.device("cuda"))
        devices.resolve_fast_path(half, torch.device("cuda"))
        if precision == "bf16":
            devices.resolve_fast_path(forced, torch.device("cuda"))
    assert (args.precision, args.channels_last, args.cuda_graph) == (precision, channels_last, True)
    if precision != "bf16":
        with pytest.warns(UserWarning, match=rf"^{name} has no native bf16 \(compute capability "
                                             rf"{capability[0]}\.{capability[1]}\): .*use --precision auto or fp32"):
            devices.resolve_fast_path(forced, torch.device("cuda"))
    assert forced.precision == "bf16"  # asked for explicitly: kept, with the warning
    assert (half.precision, half.channels_last) == ("fp16", True)  # tensor-core convolutions on every such GPU


def test_on_a_gpu_each_fast_path_flag_turns_off_and_the_graph_needs_the_tensor_pipeline(monkeypatch):
    _pretend_cuda_gpu(monkeypatch, (9, 0), "NVIDIA H100")
    plain = _args(precision="fp32", channels_last="off", cuda_graph="off")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        devices.resolve_fast_path(plain, torch.device("cuda"))
        on = _args(cuda_graph="on")
        devices.resolve_fast_path(on, torch.device("cuda"))
        template_pipeline = _args(pipeline="torchvision")
        devices.resolve_fast_path(template_pipeline, torch.device("cuda"))
        mixer = _args(model="mlpmixer")
        devices.resolve_fast_path(mixer, torch.device("cuda"))
    assert (plain.precision, plain.channels_last, plain.cuda_graph) == ("fp32", False, False)
    assert on.cuda_graph is True and template_pipeline.cuda_graph is False
    assert (mixer.precision, mixer.channels_last, mixer.cuda_graph) == ("bf16", False, True)  # the layout: convolutions
    assert torch.backends.cudnn.benchmark is True  # the fixed input shape lets cuDNN pick its fastest kernels
    with pytest.warns(UserWarning, match="--cuda_graph on needs CUDA and --pipeline tensor: running eager steps"):
        devices.resolve_fast_path(_args(pipeline="torchvision", cuda_graph="on"), torch.device("cuda"))


@pytest.mark.filterwarnings("ignore:--precision bf16")  # this CPU may emulate bf16: the flags run all the same
def test_cli_runs_the_fast_path_flags_on_cpu(run_args, tmp_path):
    logdir = str(tmp_path / "run")
    assert main.main(run_args("mlpmixer", "--logdir", logdir, "--precision", "bf16", "--channels_last", "on",
                              "--lr_schedule", "onecycle", "--label_smoothing", "0.1", epochs=2)) == 0
    with open(os.path.join(logdir, "results.json")) as f:
        results = json.load(f)
    assert results["args"]["precision"] == "bf16" and results["args"]["channels_last"] is True
    assert results["args"]["cuda_graph"] is False and results["status"] == "completed"


def test_cli_compile_flag_compiles_the_model_once(run_args, tmp_path, quick_compile):
    logdir = str(tmp_path / "run")
    assert main.main(run_args("mlp", "--logdir", logdir, "--compile", epochs=2)) == 0
    with open(os.path.join(logdir, "results.json")) as f:
        results = json.load(f)
    assert quick_compile == ["MLP"] and results["args"]["compile"] is True and results["status"] == "completed"


def test_compile_on_a_machine_that_cannot_build_kernels_stops_in_one_line_and_leaves_no_folder(run_args, tmp_path,
                                                                                                monkeypatch, capsys):
    def backend_without_a_compiler(graph_module, example_inputs):  # as inductor fails without g++ (or Triton)
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore of torch's explanation")
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: real_compile(model, backend=backend_without_a_compiler))
    logdir = tmp_path / "new" / "run"
    capsys.readouterr()
    assert main.main(run_args("mlp", "--logdir", str(logdir), "--compile")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --compile: torch.compile failed on this machine (RuntimeError: InvalidCxxCompiler: "
                          "No working C++ compiler found); ")
    assert err.endswith("it needs a C++ compiler to compile for a CPU, Triton for a GPU: install it, or run without "
                        "--compile\n") and len(err.splitlines()) == 1
    assert not logdir.exists() and (tmp_path / "new").is_dir()  # the run made only the folder it was given


@pytest.mark.parametrize("out_of_memory, said", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB. GPU 0 has a total capacity of "
                                 "15.00 GiB of which 2.00 GiB is free. More advice."),
     "error: CUDA out of memory. Tried to allocate 9.00 GiB."),
    (RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 9663676416 bytes."),
     "error: CPU out of memory. Tried to allocate 9.00 GiB, which the system refused;"),
], ids=["gpu", "cpu"])
def test_a_compiled_run_out_of_memory_is_told_so_not_that_compiling_failed(out_of_memory, said, run_args, tmp_path,
                                                                          monkeypatch, capsys):
    def compiled_out_of_memory(model):
        def first_call(images):
            raise out_of_memory
        return first_call
    monkeypatch.setattr(torch, "compile", compiled_out_of_memory)
    capsys.readouterr()
    assert main.main(run_args("mlp", "--logdir", str(tmp_path / "run"), "--compile")) == 2
    err = capsys.readouterr().err
    assert err.startswith(said) and "--compile" not in err


@pytest.mark.parametrize("hip, capability, native", [(None, (8, 0), True), (None, (7, 5), False),
                                                     ("6.2", (7, 5), True)])  # on ROCm taken as native
def test_native_bf16_from_compute_capability_8_and_on_rocm(monkeypatch, hip, capability, native):
    _pretend_cuda_gpu(monkeypatch, capability, "a GPU")
    monkeypatch.setattr(torch.version, "hip", hip)
    assert devices.has_native_bf16(torch.device("cuda")) is native


def test_a_device_that_is_there_is_used_without_a_warning(monkeypatch):
    launched = []
    monkeypatch.setattr(devices, "_launch_a_kernel", launched.append)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert devices.resolve_device("cpu") == torch.device("cpu")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        assert devices.resolve_device("cuda") == torch.device("cuda")
    assert launched == [torch.device("cuda")]  # the GPU ran a kernel; the CPU needs no such check


_NO_KERNEL_IMAGE = RuntimeError("CUDA error: no kernel image is available for execution on the device\n"
                                "Search for `cudaErrorNoKernelImageForDevice' in https://docs.nvidia.com/cuda")
_TORCHS_WARNING = ("\nTesla P100-PCIE-16GB with CUDA capability sm_60 is not compatible with the current PyTorch "
                   "installation.\nThe current PyTorch install supports CUDA capabilities sm_70 sm_75 sm_80.\n")


def _pretend_a_gpu_without_kernels(monkeypatch):
    """A P100 under a PyTorch built from compute capability 7.0 on, as on Kaggle: CUDA is available, torch warns as
    it starts CUDA, and the first kernel fails."""
    def launch(device):
        warnings.warn(_TORCHS_WARNING)
        raise _NO_KERNEL_IMAGE
    _pretend_cuda_gpu(monkeypatch, (6, 0), "Tesla P100-PCIE-16GB")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_70", "sm_75", "sm_80"])
    monkeypatch.setattr(devices, "_launch_a_kernel", launch)


def test_a_gpu_that_this_pytorch_has_no_kernels_for_is_refused_in_one_line_naming_the_ways_out(monkeypatch):
    _pretend_a_gpu_without_kernels(monkeypatch)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with pytest.raises(devices.UserError) as refused:
            devices.resolve_device("cuda")
    assert str(refused.value) == (
        f"this PyTorch {torch.__version__} has no CUDA kernels for Tesla P100-PCIE-16GB (compute capability 6.0; it "
        "was built for sm_70 sm_75 sm_80): train on a GPU that it supports (on Kaggle, GPU T4 x2 rather than P100), "
        "install a PyTorch build for this GPU (https://pytorch.org/get-started/locally/), or pass --device cpu")
    assert shown == []  # torch's warning says less than the line, over several


def test_torchs_warnings_as_a_working_gpu_starts_are_shown(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(devices, "_launch_a_kernel", lambda device: warnings.warn("what torch says as CUDA starts"))
    with pytest.warns(UserWarning, match="^what torch says as CUDA starts$"):
        assert devices.resolve_device("cuda") == torch.device("cuda")


def test_another_error_of_the_first_kernel_is_not_taken_for_a_missing_kernel(monkeypatch):
    def launch_on_a_busy_gpu(device):
        raise RuntimeError("CUDA error: CUDA-capable device(s) is/are busy or unavailable")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(devices, "_launch_a_kernel", launch_on_a_busy_gpu)
    with pytest.raises(RuntimeError, match="busy or unavailable"):
        devices.resolve_device("cuda")


def test_a_run_on_a_gpu_without_kernels_stops_in_one_line_before_the_data_and_leaves_no_folder(run_args, tmp_path,
                                                                                               monkeypatch, capsys):
    _pretend_a_gpu_without_kernels(monkeypatch)
    read = []
    monkeypatch.setattr(engine, "load_cifar10", read.append)
    logdir = tmp_path / "new" / "run"
    capsys.readouterr()
    assert main.main(run_args("mlp", "--logdir", str(logdir), "--device", "cuda")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: this PyTorch ") and "no CUDA kernels for Tesla P100-PCIE-16GB" in err
    assert len(err.splitlines()) == 1 and read == [] and not logdir.exists()


@pytest.mark.parametrize("cuda, nvidia_smi, fix_named", [
    (None, "C:\\Windows\\System32\\nvidia-smi.exe", True),  # PyPI's torch on a Windows laptop with an NVIDIA GPU
    (None, None, False),  # a CPU-only build on a machine without one: nothing to fix
    ("12.8", "/usr/bin/nvidia-smi", False),  # a CUDA build that finds no GPU (a driver problem torch warns of)
])
def test_the_cuda_fallback_names_the_fix_where_an_nvidia_gpu_meets_a_cpu_only_pytorch(cuda, nvidia_smi, fix_named,
                                                                                      monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(devices.shutil, "which", lambda name: nvidia_smi if name == "nvidia-smi" else None)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        assert devices.resolve_device("cuda") == torch.device("cpu")
    fix = (f"CUDA is not available to this CPU-only PyTorch ({torch.__version__}; PyPI's torch for Windows is "
           "CPU-only), though this machine has an NVIDIA GPU (nvidia-smi is installed); install a CUDA build of torch "
           "(https://pytorch.org/get-started/locally/) to train on it")
    said = fix if fix_named else "CUDA is not available"
    assert [str(warning.message) for warning in shown] == [
        f"{said}: running on the CPU (pass --device cpu to silence this)"]


def test_cuda_request_falls_back_to_cpu_with_a_warning():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.warns(UserWarning, match="CUDA is not available"):
        assert devices.resolve_device("cuda").type == "cpu"

"""How a run names the device it trains on: a GPU by its UUID and name, a CPU by its model (on Linux, macOS and
Windows) and its number of threads, and how many CPUs a run may use."""
import os
import subprocess

import pytest
import torch

from training import devices


def test_a_gpu_is_identified_by_its_uuid_and_not_by_an_index_a_batch_system_may_renumber(monkeypatch):
    from types import SimpleNamespace

    uuids = {0: "58d1", 1: "77c2"}
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: asked.append(index) or SimpleNamespace(**({"uuid": uuids[index]}
                                                                                 if index in uuids else {})))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert devices.device_identity(torch.device("cuda")) == "GPU-77c2"  # the current one
    assert devices.device_identity(torch.device("cuda", 0)) == "GPU-58d1"
    assert devices.device_identity(torch.device("cuda", 2)) is None  # a torch that does not give the UUID
    assert asked == [1, 0, 2]
    assert devices.device_identity(torch.device("cpu")) == "cpu"


def test_a_device_is_described_by_the_gpus_name_or_the_cpus_model_and_its_number_of_threads(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert devices.describe_device(torch.device("cuda")) == "NVIDIA H200"
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n\n"
                       "processor\t: 1\nmodel name\t: AMD EPYC\n")  # this project's third CPU, as its Linux lists it
    monkeypatch.setattr(devices, "CPUINFO", str(cpuinfo))
    monkeypatch.setattr(devices.platform, "system", lambda: "Linux")
    monkeypatch.setattr(devices.platform, "processor", lambda: "")  # what Linux says
    monkeypatch.setattr(devices.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # a study worker's share of the cores
    assert devices.describe_device(torch.device("cpu")) == "cpu (AMD EPYC, 1 thread)"
    cpuinfo.write_text("processor\t: 0\nBogoMIPS\t: 243.75\nCPU implementer\t: 0x41\n")  # Linux on ARM: no model
    monkeypatch.setattr(devices.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert devices.describe_device(torch.device("cpu")) == "cpu (aarch64, 8 threads)"
    monkeypatch.setattr(devices, "CPUINFO", str(tmp_path / "absent"))
    assert devices.describe_device(torch.device("cpu")) == "cpu (aarch64, 8 threads)"


@pytest.mark.parametrize("said, described", [("Apple M2\n", "cpu (Apple M2, 8 threads)"),
                                             ("", "cpu (arm64, 8 threads)"),
                                             (None, "cpu (arm64, 8 threads)")])  # None: sysctl is not there
def test_on_macos_the_cpu_model_is_sysctls_brand_string(monkeypatch, said, described):
    def sysctl(argv, **kwargs):
        assert argv == ["sysctl", "-n", "machdep.cpu.brand_string"]
        if said is None:
            raise FileNotFoundError(argv[0])
        return subprocess.CompletedProcess(argv, 0, stdout=said, stderr="")
    monkeypatch.setattr(devices.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(devices.platform, "processor", lambda: "arm")  # what macOS says, less than sysctl does
    monkeypatch.setattr(devices.platform, "machine", lambda: "arm64")
    monkeypatch.setattr(devices.subprocess, "run", sysctl)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert devices.describe_device(torch.device("cpu")) == described


def test_on_windows_the_cpu_model_is_what_python_says_of_the_processor(monkeypatch):
    monkeypatch.setattr(devices.platform, "system", lambda: "Windows")
    monkeypatch.setattr(devices.platform, "processor", lambda: "Intel64 Family 6 Model 158 Stepping 10, GenuineIntel")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert devices.describe_device(torch.device("cpu")) == ("cpu (Intel64 Family 6 Model 158 Stepping 10, "
                                                            "GenuineIntel, 4 threads)")


def test_usable_cpus_counts_the_affinity_mask_or_else_the_hosts_cpus(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 3, 9}, raising=False)
    assert devices.usable_cpus() == 3
    monkeypatch.delattr(os, "sched_getaffinity")  # macOS and Windows have no affinity mask in Python
    assert devices.usable_cpus() == 64

"""launch/install.sh's decisions, without downloading anything (--plan): which Python, which
TensorFlow package, which Horovod build and which wheel cache a host gets."""
import glob
import os
import subprocess

import pytest

from helpers import REPO_ROOT

INSTALL = os.path.join(REPO_ROOT, "launch", "install.sh")
PYENV = os.path.expanduser("~/.pyenv/versions")


def plan(tmp_path, **env):
    result = subprocess.run(["/bin/bash", INSTALL, "--plan"], capture_output=True, text=True,
                            env={**os.environ, "HVD_CIFAR_VENV": str(tmp_path / "no-venv"),
                                 "HVD_CIFAR_NVIDIA_DEVICE": str(tmp_path / "no-device"),
                                 "HVD_CIFAR_NVIDIA_PROC": str(tmp_path / "no-proc"), **env})
    return result, dict(line.split(": ", 1) for line in result.stdout.splitlines())


@pytest.mark.parametrize("forced, visible, build", [
    (None, None, "cpu"), (None, "device", "nccl"), (None, "proc", "nccl"),
    ("1", None, "nccl"), ("0", "device", "cpu"), ("0", "proc", "cpu"), ("1", "device", "nccl")])
def test_a_gpu_host_gets_the_nccl_build_and_a_cpu_host_the_cpu_build(tmp_path, forced, visible,
                                                                      build):
    env = {} if forced is None else {"HVD_CIFAR_GPU": forced}
    if visible == "device":  # a container's /dev/nvidia0 without nvidia-smi
        (tmp_path / "nvidia0").touch()
        env["HVD_CIFAR_NVIDIA_DEVICE"] = str(tmp_path / "nvidia0")
    elif visible == "proc":  # /proc/driver/nvidia/gpus/<bus id>
        (tmp_path / "gpus" / "0000:3b:00.0").mkdir(parents=True)
        env["HVD_CIFAR_NVIDIA_PROC"] = str(tmp_path / "gpus")
    if forced is None:
        env["HVD_CIFAR_GPU"] = ""
    result, decided = plan(tmp_path, **env)
    assert result.returncode == 0, result.stderr
    assert decided["tensorflow"] == ("tensorflow[and-cuda]==2.15.1" if build == "nccl"
                                     else "tensorflow-cpu==2.15.1")
    assert decided["horovod"] == ("0.28.1, NCCL, MPI and Gloo" if build == "nccl"
                                  else "0.28.1, MPI and Gloo (CPU)")
    assert decided["cache"].endswith(f"-tf2.15.1-horovod0.28.1-{build}")


def test_a_bad_gpu_setting_is_one_line(tmp_path):
    result, _ = plan(tmp_path, HVD_CIFAR_GPU="yes")
    assert result.returncode == 1
    assert result.stderr.strip() == ("install: error: HVD_CIFAR_GPU must be 1 (GPU build), 0 "
                                     "(CPU build) or unset (detect), got 'yes'")


@pytest.mark.parametrize("version", ["3.9", "3.10", "3.11"])
def test_python_3_9_to_3_11_is_taken_and_named_in_the_cache_key(tmp_path, version):
    pythons = glob.glob(f"{PYENV}/{version}.*/bin/python{version}")
    assert pythons, f"this machine's pyenv has Python {version}"
    result, decided = plan(tmp_path, PYTHON=pythons[0])
    assert result.returncode == 0, result.stderr
    assert decided["python"] == f"{pythons[0]} ({version})"
    assert f"/py{version.replace('.', '')}-tf2.15.1-" in decided["cache"]


def test_only_python_3_12_or_newer_is_refused_with_the_ways_out(tmp_path):
    newer = sorted(glob.glob(f"{PYENV}/3.1[23].*/bin/python3.1[23]"))
    assert newer, "this machine's pyenv has Python 3.12 or 3.13"
    path = tmp_path / "bin"
    path.mkdir()
    os.symlink(newer[0], path / "python3")  # a host whose only python3 is 3.12 or newer
    for tool in ("dirname", "ls", "grep"):
        os.symlink(f"/usr/bin/{tool}", path / tool)
    result, _ = plan(tmp_path, PATH=str(path), HVD_CIFAR_GPU="0")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("install: error: no Python 3.9-3.11 on the "
                                                   "PATH for TensorFlow 2.15.1 (found: python3 "
                                                   "is 3.1")
    for way_out in ("conda env create -f environment.yml", "uv python install 3.11",
                    "python3.11 package"):
        assert way_out in lines[0]


def test_a_gpu_build_without_a_cuda_12_compiler_fails_before_installing_anything(tmp_path):
    # PyPI's CUDA 12 nvcc wheels carry ptxas only: the compiler must come from a CUDA 12
    # toolkit, and this machine's /usr/local/cuda is another CUDA's.
    venv = tmp_path / "venv"
    env = {**os.environ, "HVD_CIFAR_GPU": "1", "HVD_CIFAR_VENV": str(venv),
           "HOROVOD_CUDA_HOME": str(tmp_path / "no-toolkit")}
    result = subprocess.run(["/bin/bash", INSTALL], capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "install: error: the NCCL build of Horovod needs nvcc from CUDA 12 (TensorFlow 2.15.1 "
        "is built with CUDA 12.2); found: no nvcc. Install CUDA 12.2's toolkit and set "
        "HOROVOD_CUDA_HOME to it, or use the conda environment (cuda-nvcc=12.2); PyPI's "
        "nvidia-cuda-nvcc-cu12 wheels carry ptxas only")
    assert not venv.exists()
    other = "/usr/local/cuda"
    if os.path.exists(f"{other}/bin/nvcc"):
        result = subprocess.run(["/bin/bash", INSTALL], capture_output=True, text=True,
                                env={**env, "HOROVOD_CUDA_HOME": other})
        assert result.returncode == 1 and f"found: {other}/bin/nvcc is CUDA 1" in result.stderr

"""launch/install.sh's decisions, without downloading anything (--plan): which Python, which
TensorFlow package, which Horovod build and which wheel cache a host gets."""
import glob
import os
import re
import subprocess
import sys

import pytest

from helpers import REPO_ROOT

INSTALL = os.path.join(REPO_ROOT, "launch", "install.sh")
PYENV = os.path.expanduser("~/.pyenv/versions")


def path_without_nvidia_smi():
    """This PATH without the folders holding an nvidia-smi: the plan then sees only the GPUs
    a test gives it, whatever GPUs this host has."""
    return os.pathsep.join(folder for folder in os.environ["PATH"].split(os.pathsep)
                           if not os.access(os.path.join(folder, "nvidia-smi"), os.X_OK))


def plan(tmp_path, **env):
    result = subprocess.run(["/bin/bash", INSTALL, "--plan"], capture_output=True, text=True,
                            env={**os.environ, "PATH": path_without_nvidia_smi(),
                                 "HVD_CIFAR_VENV": str(tmp_path / "no-venv"),
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
    if build == "nccl":  # a toolkit of the test's own, whatever nvcc this host has or lacks
        env["HOROVOD_CUDA_HOME"] = str(fake_toolkit(tmp_path, "13.0"))
    result, decided = plan(tmp_path, **env)
    assert result.returncode == 0, result.stderr
    assert decided["tensorflow"] == ("tensorflow[and-cuda]==2.15.1" if build == "nccl"
                                     else "tensorflow-cpu==2.15.1")
    assert decided["horovod"] == ("0.28.1, NCCL, MPI and Gloo" if build == "nccl"
                                  else "0.28.1, MPI and Gloo (CPU)")
    # A GPU build's cache names the CUDA release it was compiled with.
    cuda = r"-cuda1[23]\.[0-9]+" if build == "nccl" else ""
    assert re.search(rf"-tf2\.15\.1-horovod0\.28\.1-{build}{cuda}$", decided["cache"])


def test_a_bad_gpu_setting_is_one_line(tmp_path):
    result, _ = plan(tmp_path, HVD_CIFAR_GPU="yes")
    assert result.returncode == 1
    assert result.stderr.strip() == ("install: error: HVD_CIFAR_GPU must be 1 (GPU build), 0 "
                                     "(CPU build) or unset (detect), got 'yes'")


@pytest.mark.parametrize("version", ["3.9", "3.10", "3.11"])
def test_python_3_9_to_3_11_is_taken_and_named_in_the_cache_key(tmp_path, version):
    pythons = glob.glob(f"{PYENV}/{version}.*/bin/python{version}")
    if not pythons:
        pytest.skip(f"no Python {version} under {PYENV} on this host")
    result, decided = plan(tmp_path, PYTHON=pythons[0])
    assert result.returncode == 0, result.stderr
    assert decided["python"] == f"{pythons[0]} ({version})"
    assert f"/py{version.replace('.', '')}-tf2.15.1-" in decided["cache"]


def test_only_python_3_12_or_newer_is_refused_with_the_ways_out(tmp_path):
    newer = sorted(glob.glob(f"{PYENV}/3.1[23].*/bin/python3.1[23]"))
    if not newer:
        pytest.skip(f"no Python 3.12 or 3.13 under {PYENV} on this host")
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


def fake_toolkit(tmp_path, release):
    """A CUDA toolkit folder whose nvcc reports release (and its home, as nvcc --dryrun does)."""
    home = tmp_path / f"cuda-{release}"
    (home / "bin").mkdir(parents=True)
    nvcc = home / "bin" / "nvcc"
    nvcc.write_text(f"""#!/bin/sh
case "$1" in
  --version) echo "Cuda compilation tools, release {release}, V{release}.99" ;;
  --dryrun) echo "#$ TOP={home}/bin/.." >&2 ;;
esac
""")
    nvcc.chmod(0o755)
    return home


def fake_driver(tmp_path, driver, cuda, compute_cap="9.0"):
    """A folder holding an nvidia-smi that reports this driver, its CUDA and one GPU."""
    folder = tmp_path / "driver-bin"
    folder.mkdir(exist_ok=True)
    smi = folder / "nvidia-smi"
    smi.write_text(f"""#!/bin/sh
case "$1" in
  -L) echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)" ;;
  --query-gpu=driver_version) echo "{driver}" ;;
  --query-gpu=compute_cap) echo "{compute_cap}" ;;
  *) echo "| NVIDIA-SMI {driver}   Driver Version: {driver}   CUDA Version: {cuda}     |" ;;
esac
""")
    smi.chmod(0o755)
    return folder


def gpu_plan(tmp_path, release, driver=None, **env):
    home = fake_toolkit(tmp_path, release)
    path = path_without_nvidia_smi()
    if driver:
        path = f"{fake_driver(tmp_path, *driver)}:{path}"
    return plan(tmp_path, HVD_CIFAR_GPU="1", HOROVOD_CUDA_HOME=str(home), PATH=path, **env)


@pytest.mark.parametrize("driver, release", [(("535.104.05", "12.2"), "12.4"),
                                             (("580.159.03", "13.0"), "13.0"),
                                             (("580.159.03", "13.0"), "12.4")])
def test_a_toolkit_the_driver_supports_is_built_with(tmp_path, driver, release):
    result, decided = gpu_plan(tmp_path, release, driver)
    assert result.returncode == 0, result.stderr
    assert decided["nvcc"] == (f"{tmp_path}/cuda-{release}/bin/nvcc (CUDA {release}, toolkit "
                               f"{tmp_path}/cuda-{release})")
    assert decided["driver"] == f"{driver[0]} (CUDA {driver[1]})"
    assert decided["cuda_cc_list"] == "90 (this host's GPUs)"
    assert decided["cache"].endswith(f"-horovod0.28.1-nccl-cuda{release}")


def test_a_toolkit_newer_than_the_driver_is_refused_naming_both_and_the_ways_out(tmp_path):
    result, _ = gpu_plan(tmp_path, "13.0", ("535.104.05", "12.2"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"install: error: {tmp_path}/cuda-13.0/bin/nvcc is CUDA 13.0, newer than this host's "
        "driver 535.104.05 supports (CUDA 12.2); a CUDA 13.0 build needs driver 580 or newer. "
        "Install a CUDA 12 toolkit and set HOROVOD_CUDA_HOME to it, or update the driver"]


def test_without_a_driver_the_build_goes_ahead_and_says_which_driver_it_needs(tmp_path):
    for release, needs in (("13.0", "580 or newer (CUDA 13)"), ("12.2", "525.60 or newer "
                                                                        "(CUDA 12)")):
        result, decided = gpu_plan(tmp_path, release)
        assert result.returncode == 0, result.stderr
        assert decided["driver"] == f"none on this host; this build needs driver {needs}"
        assert decided["cuda_cc_list"] == ("75,80,86,89,90,100,120 (no GPU here: the list for "
                                           "CUDA 13)" if release == "13.0" else
                                           "70,75,80,86,89,90 (no GPU here: the list for CUDA 12)")


def test_the_compute_capabilities_set_by_hand_are_honoured(tmp_path):
    result, decided = gpu_plan(tmp_path, "13.0", ("580.159.03", "13.0"),
                               HOROVOD_BUILD_CUDA_CC_LIST="80,90")
    assert result.returncode == 0, result.stderr
    assert decided["cuda_cc_list"] == "80,90 (HOROVOD_BUILD_CUDA_CC_LIST)"


def test_a_gpu_build_without_any_cuda_compiler_fails_before_installing_anything(tmp_path):
    venv = tmp_path / "venv"
    env = {**os.environ, "HVD_CIFAR_GPU": "1", "HVD_CIFAR_VENV": str(venv),
           "HOROVOD_CUDA_HOME": str(tmp_path / "no-toolkit")}
    result = subprocess.run(["/bin/bash", INSTALL], capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "install: error: the NCCL build of Horovod needs nvcc from CUDA 12 or 13; found: no "
        "nvcc. Install a CUDA toolkit the driver supports and set HOROVOD_CUDA_HOME to it, or "
        "use the conda environment (cuda-nvcc=12.2); PyPI's nvidia-cuda-nvcc-cu12 wheels carry "
        "ptxas only")
    assert not venv.exists()


def toolchain_fixes():
    exports = subprocess.run(["/bin/bash", INSTALL, "--toolchain-fixes"], capture_output=True,
                             text=True, check=True).stdout
    return dict(re.findall(r'^export (\w+)="?(.*?)"?$', exports, re.M))


def test_cmake_4_configures_a_project_that_asks_for_cmake_2_8_with_the_fix(tmp_path):
    cmake = os.path.join(os.path.dirname(sys.executable), "cmake")
    version = subprocess.run([cmake, "--version"], capture_output=True, text=True).stdout
    assert version.startswith("cmake version 4."), version
    (tmp_path / "CMakeLists.txt").write_text("cmake_minimum_required(VERSION 2.8.12)\n"
                                             "project(like_gloo NONE)\n")
    configure = [cmake, "-S", str(tmp_path), "-B", str(tmp_path / "build")]
    plain = subprocess.run(configure, capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items()
                                if k != "CMAKE_POLICY_VERSION_MINIMUM"})
    assert plain.returncode != 0 and "Compatibility with CMake < 3.5" in plain.stderr
    fixed = subprocess.run(configure, capture_output=True, text=True,
                           env={**os.environ, **toolchain_fixes()})
    assert fixed.returncode == 0, fixed.stderr


def test_cxx_code_that_forgets_standard_headers_compiles_with_the_fix(tmp_path):
    source = tmp_path / "forgetful.cc"
    source.write_text("std::string name(uint32_t n) {\n"
                      "  if (n > std::numeric_limits<uint32_t>::max() / 2)\n"
                      "    throw std::logic_error(\"too big\");\n"
                      "  return std::to_string(n);\n}\n")
    compile_ = ["g++", "-c", str(source), "-o", str(tmp_path / "forgetful.o")]
    assert subprocess.run(compile_, capture_output=True).returncode != 0
    flags = toolchain_fixes()["CXXFLAGS"].split()
    fixed = subprocess.run(compile_[:2] + flags + compile_[2:], capture_output=True, text=True)
    assert fixed.returncode == 0, fixed.stderr

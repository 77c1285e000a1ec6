#!/usr/bin/env bash
# One install path for every user of hvd_cifar (the Makefile, .ci/run, conda users).
#
#   launch/install.sh            Debian's Open MPI (apt-get, when missing) + .venv + pinned
#                                packages + Horovod built from source, then horovodrun --check-build
#   launch/install.sh --horovod-only
#                                only build/install Horovod into the active Python
#                                (conda users: after `conda env create -f environment.yml`)
#
# Horovod 0.28.1 ships as an sdist only. It is built with --no-build-isolation because build
# isolation hides TensorFlow from Horovod's CMake, and the built wheel is cached outside the
# clone (keyed by Python, TensorFlow and Horovod versions, and GPU or CPU) so a second run, or
# a fresh clone on the same machine, installs it in seconds instead of ~6 minutes.
set -euo pipefail

HOROVOD_VERSION=0.28.1
TENSORFLOW_VERSION=2.15.1
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${HVD_CIFAR_VENV:-$repo_root/.venv}
wheel_cache_root=${HVD_CIFAR_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hvd_cifar/wheels}

say() { echo "install: $*"; }
die() { echo "install: error: $*" >&2; exit 1; }

have_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

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
  local python=$1 gpu_tag=cpu
  have_gpu && gpu_tag=nccl
  local pytag
  pytag=$("$python" -c 'import sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}")')
  local tf_version
  tf_version=$("$python" -c 'import importlib.metadata as m; print(m.version("tensorflow-cpu") if any(d.metadata["Name"]=="tensorflow-cpu" for d in m.distributions()) else m.version("tensorflow"))')
  local cache="$wheel_cache_root/$pytag-tf$tf_version-horovod$HOROVOD_VERSION-$gpu_tag"
  if ! ls "$cache"/horovod-"$HOROVOD_VERSION"-*.whl >/dev/null 2>&1; then
    say "building Horovod $HOROVOD_VERSION ($gpu_tag) — about 6 minutes on 2 cores; cached in $cache"
    "$python" -m pip install -q setuptools wheel packaging psutil pyyaml cloudpickle cffi 'cmake>=3.13'
    local build_dir; build_dir=$(mktemp -d)
    # Build into a temporary folder, then move: an interrupted build never leaves a wheel
    # in the cache that looks complete.
    (
      export HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1
      export HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
      if [ "$gpu_tag" = nccl ]; then
        export HOROVOD_GPU_OPERATIONS=NCCL
        # tensorflow[and-cuda] brings NCCL as the nvidia-nccl-cu12 wheel; build against it.
        if [ -z "${HOROVOD_NCCL_HOME:-}" ]; then
          HOROVOD_NCCL_HOME=$("$python" -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__) if nvidia.nccl.__file__ else list(nvidia.nccl.__path__)[0])' 2>/dev/null || true)
          [ -n "$HOROVOD_NCCL_HOME" ] && export HOROVOD_NCCL_HOME
        fi
      fi
      "$python" -m pip wheel -q --no-build-isolation --no-deps "horovod==$HOROVOD_VERSION" -w "$build_dir"
    ) || { rm -rf "$build_dir"; die "building Horovod failed (see the compiler output above)"; }
    mkdir -p "$cache"
    mv "$build_dir"/horovod-*.whl "$cache"/
    rm -rf "$build_dir"
  else
    say "using the cached Horovod wheel in $cache"
  fi
  "$python" -m pip install -q --no-deps --force-reinstall "$cache"/horovod-"$HOROVOD_VERSION"-*.whl
  # Horovod's own runtime requirements (installed separately because of --no-deps above).
  "$python" -m pip install -q cloudpickle psutil pyyaml packaging cffi
}

check_build() {
  local bin=$1 report
  report=$("$bin/horovodrun" --check-build) || die "horovodrun --check-build failed"
  echo "$report"
  local part
  for part in TensorFlow Gloo MPI; do
    grep -qE "\[X\] $part" <<<"$report" || die "Horovod was built without $part (horovodrun --check-build shows [ ] $part)"
  done
}

if [ "${1:-}" = "--horovod-only" ]; then
  install_horovod "$(command -v python)"
  check_build "$(dirname "$(command -v python)")"
  exit 0
fi

install_openmpi
if [ ! -x "$venv/bin/python" ]; then
  python=${PYTHON:-$(command -v python3.11 || command -v python3)}
  "$python" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    || die "$python is not Python 3.11 (TensorFlow $TENSORFLOW_VERSION needs 3.9–3.11; set PYTHON=...)"
  say "creating $venv"
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
tf_extra=cpu
have_gpu && tf_extra=gpu
say "installing hvd_cifar with the $tf_extra build of TensorFlow $TENSORFLOW_VERSION"
"$venv/bin/python" -m pip install -q -e "$repo_root[$tf_extra,test]"
install_horovod "$venv/bin/python"
check_build "$venv/bin"
say "done: $venv"

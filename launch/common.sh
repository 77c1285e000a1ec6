# Sourced by the launchers: where this checkout and its environment are, and Open MPI as root.
# VENV_BIN overrides the environment's bin folder (default: the checkout's .venv/bin).
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${VENV_BIN:-$repo_root/.venv/bin}
# Open MPI refuses to run as root (containers, CI) unless both are set.
if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
# TensorFlow's C++ start-up lines, from horovodrun too (it imports TensorFlow to check the build).
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

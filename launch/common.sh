# Sourced by the launchers: where this checkout and its environment are, and Open MPI as root.
# VENV_BIN overrides the environment's bin folder (default: the checkout's .venv/bin).
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${VENV_BIN:-$repo_root/.venv/bin}
# Open MPI refuses to run as root (containers, CI) unless both are set.
if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
# On Ctrl-C or a signal, mpirun passes SIGTERM on to the ranks and kills them this many seconds
# later (Open MPI's default is 1): time for rank 0 to finish its step and write the checkpoint.
export OMPI_MCA_odls_base_sigkill_timeout=${OMPI_MCA_odls_base_sigkill_timeout:-60}
# TensorFlow's C++ start-up lines, from horovodrun too (it imports TensorFlow to check the build).
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

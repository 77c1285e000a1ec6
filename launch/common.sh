# Sourced by the launchers: where this checkout and its environment are, and Open MPI as root.
# HVD_CIFAR_VENV is the environment holding hvd_cifar and Horovod (default: the checkout's .venv);
# HOST_PYTHON the interpreter the ranks run on every host (default: that environment's python,
# by the same path on every host).
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${HVD_CIFAR_VENV:-$repo_root/.venv}
bin=$venv/bin
host_python=${HOST_PYTHON:-$bin/python}
# Open MPI refuses to run as root (containers, CI) unless both are set.
if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
# On Ctrl-C or a signal, mpirun stops its ranks within this many seconds (Open MPI's default
# is 1): rank 0 writes its checkpoint the moment SIGTERM reaches it, which takes far less, and a
# larger value keeps the ranks training longer after Ctrl-C (docs/results/test_suite.md).
export OMPI_MCA_odls_base_sigkill_timeout=${OMPI_MCA_odls_base_sigkill_timeout:-10}
# TensorFlow's C++ start-up lines, from horovodrun too (it imports TensorFlow to check the build).
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
# The controller of every launcher (elastic.sh aside: elastic Horovod needs Gloo). Open MPI, with
# the trainer's OMPI_MCA_mpi_yield_when_idle=1 on CPU ranks, is the faster one on CPU
# (docs/results/benchmark.md); on GPU hosts NCCL moves the gradients either way.
controller=${HVD_CONTROLLER:-mpi}
case $controller in
  mpi|gloo) ;;
  *) echo "hvd_cifar: error: HVD_CONTROLLER must be mpi or gloo, got '$controller'" >&2; exit 2 ;;
esac

# The hosts of a hostfile, one `host slots` line each. Lines are `host slots=N` (Open MPI),
# `host:N` (horovodrun -H, discovery scripts) or `host` (one slot); `#` starts a comment.
hostfile_entries() {
  awk '{ sub(/#.*/, "") }
       NF { host = $1; slots = 1
            for (i = 2; i <= NF; i++) if ($i ~ /^slots=/) slots = substr($i, 7)
            if (host ~ /:/) { slots = substr(host, index(host, ":") + 1); host = substr(host, 1, index(host, ":") - 1) }
            print host, slots }' "$@"
}

# The slots of all hosts of a hostfile (standard input without a file).
total_slots() {
  hostfile_entries "$@" | awk '{ total += $2 } END { print total + 0 }'
}

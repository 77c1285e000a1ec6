"""What every Horovod process of ours needs, whatever it runs (train, evaluate, bench): launch
defaults read at hvd.init(), one device a rank, failing together, stop requests on signals,
and the state an elastic job keeps in memory."""
import os
import signal

import tensorflow as tf
import horovod.tensorflow as hvd
from horovod.common.elastic import ObjectState

from hvd_cifar.config import UserError

# Horovod: a rank that waits in a collective longer than this (another rank died or hangs)
# shuts the job down instead of hanging forever; Horovod's default, 0, never does.
STALL_SHUTDOWN_SECONDS = "300"


def set_launch_defaults():
    """Environment defaults that Horovod and Open MPI read at hvd.init(); a value the user
    set wins."""
    os.environ.setdefault("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", STALL_SHUTDOWN_SECONDS)
    if not tf.config.list_physical_devices("GPU"):
        # Open MPI busy-polls while a rank waits, taking the cores CPU ranks compute on
        # (docs/results/benchmark.md measures the difference).
        os.environ.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")


def plan_devices(gpus, local_rank, local_size, cpu_count, threads_per_rank=0):
    """(GPU to make visible or None, threads for TensorFlow's intra-op pool) for this rank."""
    if gpus:
        if local_rank >= len(gpus):
            raise UserError(f"local rank {local_rank} has no GPU: this host shows {len(gpus)} "
                            f"GPUs but runs {local_size} ranks (start one rank per GPU)")
        return gpus[local_rank], None
    # Ranks on one host share its cores: oversubscribed thread pools make them all slower.
    return None, threads_per_rank or max(1, cpu_count // local_size)


def pin_devices(local_rank, local_size, threads_per_rank=0):
    """Horovod: one GPU per rank by local rank (memory growth on), else a share of the cores.
    Returns the device in words (GPU:0, CPU/2 threads)."""
    gpus = tf.config.list_physical_devices("GPU")
    gpu, threads = plan_devices(gpus, local_rank, local_size, len(os.sched_getaffinity(0)),
                                threads_per_rank)
    if gpu is not None:
        for device in gpus:
            tf.config.experimental.set_memory_growth(device, True)
        tf.config.set_visible_devices(gpu, "GPU")
        return f"GPU:{local_rank}"
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    return f"CPU/{threads} threads"


def fail_together(action):
    """Run action on this rank; when it raises a UserError on any rank, raise it on every rank.

    Horovod: without this a rank that fails alone leaves the others waiting in a collective."""
    try:
        result, error = action(), None
    except UserError as failure:
        result, error = None, str(failure)
    errors = [e for e in hvd.allgather_object(error) if e]
    if errors:
        raise UserError(errors[0])
    return result


class StopRequest:
    """Remembers a SIGTERM (Slurm preemption or time limit, via --signal) or SIGINT (Ctrl-C);
    the training loop acts on it at its next log step, where every rank learns of it together."""

    def __init__(self):
        self.signal_number = 0
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signal_number, self.request)

    def request(self, signal_number, frame):
        self.signal_number = signal_number


class ElasticState(ObjectState):
    """Horovod: the state of an elastic job, the trainer's variables (model, optimizer, moving
    averages, step) copied to host memory at every commit, plus whether rank 0 has set the run
    up. A worker that fails rolls everyone back to the last commit; one that joins receives the
    state from rank 0.

    horovod.tensorflow.elastic.TensorFlowState does not re-broadcast its variables in eager
    mode (0.28.1 syncs only through a session), so a joining worker would keep its own."""

    def __init__(self, variables):
        self.variables = variables
        self.copy_to_host()
        super().__init__(bcast_object=hvd.broadcast_object, get_rank=hvd.rank, set_up=False)

    def copy_to_host(self):
        self.committed = [variable.numpy() for variable in self.variables]

    def save(self):
        self.copy_to_host()
        super().save()

    def restore(self):
        for variable, value in zip(self.variables, self.committed):
            variable.assign(value)
        super().restore()

    def sync(self):
        hvd.broadcast_variables(self.variables, root_rank=0)
        self.copy_to_host()
        super().sync()

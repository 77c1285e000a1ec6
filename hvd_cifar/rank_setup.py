"""Setting a Horovod process up before and around hvd.init(): the launch defaults Horovod and
Open MPI read, the timeline, which process says a shared error, one device (or a share of the
cores) a rank, and deterministic ops."""
import os

import tensorflow as tf
import horovod.tensorflow as hvd

from hvd_cifar.command import UserError, count, cpu_threads_per_rank, say, say_errors_when


# Horovod: a rank that waits in a collective longer than this (another rank died or hangs)
# shuts the job down instead of hanging forever; Horovod's default, 0, never does.
STALL_SHUTDOWN_SECONDS = "300"


# Horovod's own default: a stalled collective is reported after this many seconds.
STALL_CHECK_SECONDS = "60"


def set_launch_defaults():
    """Environment defaults that Horovod and Open MPI read at hvd.init(); a value the user
    set wins."""
    os.environ.setdefault("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", STALL_SHUTDOWN_SECONDS)
    check_stall_times(os.environ)
    if not tf.config.list_physical_devices("GPU"):
        # Open MPI busy-polls while a rank waits, taking the cores CPU ranks compute on
        # (docs/results/benchmark.md measures the difference).
        os.environ.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")


def set_timeline(path, mark_cycles=False):
    """Horovod: record its timeline (negotiation and all-reduce of every tensor, written by
    rank 0) to path; Horovod reads these at hvd.init(), so this works under every launcher."""
    if path:
        # Horovod writes nothing, and says nothing, when the file's folder is missing.
        folder = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as error:
            raise UserError(f"--horovod_timeline {path}: cannot make its folder {folder} "
                            f"({error.strerror})") from None
        os.environ["HOROVOD_TIMELINE"] = os.path.abspath(path)
        if mark_cycles:
            os.environ["HOROVOD_TIMELINE_MARK_CYCLES"] = "1"


def check_stall_times(environment):
    """Horovod ignores a stall shutdown time below its stall warning time without a word: such a
    job would hang forever where the user asked it to end."""
    names = ("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", "HOROVOD_STALL_CHECK_TIME_SECONDS")
    try:
        shutdown, check = (float(environment.get(n, STALL_CHECK_SECONDS)) for n in names)
    except ValueError:
        raise UserError(f"{names[0]} and {names[1]} must be numbers of seconds") from None
    if 0 < shutdown < check:
        raise UserError(f"{names[0]}={shutdown:g} is below {names[1]} ({check:g} s), so Horovod "
                        f"would ignore it: set it above {check:g}, or lower {names[1]} too")


def start_horovod():
    """Horovod: start the controller (MPI or Gloo) and learn this process's place in the job;
    from then on rank 0 alone says the errors the ranks meet together."""
    hvd.init()
    say_errors_when(lambda: not hvd.is_initialized() or hvd.rank() == 0)


def controller_name():
    return "MPI" if hvd.mpi_enabled() else "Gloo"


def plan_devices(gpus, local_rank, local_size, cpu_count, threads_per_rank=0):
    """(GPU to make visible or None, threads for TensorFlow's intra-op pool) for this rank."""
    if gpus:
        if local_rank >= len(gpus):
            raise UserError(f"local rank {local_rank} has no GPU: this host shows {len(gpus)} "
                            f"GPUs but runs {local_size} ranks (start one rank per GPU)")
        return gpus[local_rank], None
    return None, cpu_threads_per_rank(threads_per_rank, cpu_count, local_size)


def pin_devices(local_rank, local_size, threads_per_rank=0):
    """Horovod: one GPU per rank by local rank (memory growth on), else a share of the cores.
    Returns the device in words (GPU:0, CPU/2 threads)."""
    gpus = tf.config.list_physical_devices("GPU")
    cores = len(os.sched_getaffinity(0))
    gpu, threads = plan_devices(gpus, local_rank, local_size, cores, threads_per_rank)
    if gpu is None and threads * local_size > cores and local_rank == 0:
        ranks = count(local_size, "rank")
        say(f"hvd_cifar: warning: --threads_per_rank {threads} x {ranks} on this "
            f"host is more than its {cores} cores; the ranks will slow each other down")
    if gpu is not None:
        for device in gpus:
            tf.config.experimental.set_memory_growth(device, True)
        tf.config.set_visible_devices(gpu, "GPU")
        return f"GPU:{local_rank}"
    use_cpu_threads(threads)
    return f"CPU/{threads} threads"


def use_cpu_threads(threads):
    """TensorFlow's two thread pools at threads each: a rank's share of the host's cores."""
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def xla_compiles(setting):
    """Whether --xla (on, off, auto: on GPUs) compiles the step on this rank's devices."""
    return {"on": True, "off": False,
            "auto": bool(tf.config.list_logical_devices("GPU"))}[setting]


def set_op_determinism(setting, xla_compiles):
    """--deterministic: TensorFlow's ops give the same results run after run (cuDNN's
    convolution gradients and several reductions on GPUs otherwise vary). TensorFlow 2.15 has no
    deterministic XLA MaxPool gradient, so auto leaves it off where XLA compiles the step, and on
    is refused there. Whether it is on."""
    if setting == "on" and xla_compiles:
        raise UserError("--deterministic on cannot hold with XLA: TensorFlow 2.15 has no "
                        "deterministic XLA MaxPool gradient; pass --xla off with it, or "
                        "--deterministic auto")
    if setting == "on" or (setting == "auto" and not xla_compiles):
        tf.config.experimental.enable_op_determinism()
    return op_determinism_enabled()


def determinism_words(xla_compiles):
    """How rank 0 says whether this process's ops are deterministic, and why not."""
    if op_determinism_enabled():
        return "deterministic ops (a resume is bit-identical)"
    if xla_compiles:
        return ("ops not deterministic: XLA compiles the step (--xla off for bit-identical "
                "resumes)")
    return "ops not deterministic (--deterministic off)"


def op_determinism_enabled():
    # TensorFlow 2.15 keeps the question private (tf.config has only the switch).
    from tensorflow.python.framework import config as framework_config
    return framework_config.is_op_determinism_enabled()


def start_like_training(config, before_horovod=None, report_device_error=False):
    """Set this process up as training does, in its order: the launch defaults and the
    timeline (read when Horovod starts), before_horovod() if given (hvd_cifar.check's MPI-alone
    test, which must run before Horovod starts MPI), Horovod, one device a rank (a device that
    cannot be pinned raises, or with report_device_error becomes "none (why)"), then
    deterministic ops as --deterministic says. (device, whether ops are deterministic, what
    before_horovod returned)."""
    set_launch_defaults()
    set_timeline(config.horovod_timeline, config.horovod_timeline_mark_cycles)
    before = before_horovod() if before_horovod else None
    # Horovod: start the controller (MPI or Gloo) and learn this process's place in the job.
    start_horovod()
    try:
        # Horovod: one GPU per rank, by its rank on this host.
        device = pin_devices(hvd.local_rank(), hvd.local_size(), config.threads_per_rank)
    except UserError as error:
        if not report_device_error:
            raise
        device = f"none ({error})"
    deterministic = set_op_determinism(config.deterministic, xla_compiles(config.xla))
    return device, deterministic, before

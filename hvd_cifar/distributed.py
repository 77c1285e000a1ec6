"""What every Horovod process of ours needs, whatever it runs (train, evaluate, bench): launch
defaults read at hvd.init(), one device a rank, failing together, stop requests on signals,
and the state an elastic job keeps in memory."""
import os
import re
import signal
import sys
import threading
import time

import tensorflow as tf
import horovod.tensorflow as hvd
from horovod.common.elastic import ObjectState

from hvd_cifar.command import UserError, count, cpu_threads_per_rank, say, say_errors_when
from hvd_cifar.processes import caught_signals, parent_pid, process_arguments, process_start_time

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


def barrier(name):
    """Horovod: return when every rank has reached this point (an all-reduce of nothing)."""
    hvd.allreduce(tf.constant(0.0), name=name).numpy()


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
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    return f"CPU/{threads} threads"


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


def fail_together(action):
    """Run action on this rank; when it raises a UserError on any rank, raise it on every rank.

    Horovod: without this a rank that fails alone leaves the others waiting in a collective.
    It costs one small all-gather."""
    try:
        result, error = action(), None
    except UserError as failure:
        result, error = None, str(failure)
    errors = [e for e in hvd.allgather_object(error) if e]
    if errors:
        raise UserError(errors[0])
    return result


# What a collective raises in a rank whose peers stopped answering or died (Gloo's timeout, a
# closed connection, Horovod shutting down after another rank failed).
LOST_PEER_MARKERS = ("Horovod", "Gloo", "gloo", "Connection", "connection")


def lost_peer_reason(error):
    """Horovod's or Gloo's reason in a collective's error when the other ranks are gone, in a
    few words; None when error is something else."""
    text = str(error)
    if not any(marker in text for marker in LOST_PEER_MARKERS):
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # The reason is a line of Horovod's or Gloo's, not one of TensorFlow's node trace.
    reasons = [line for line in lines if any(m in line for m in LOST_PEER_MARKERS)
               and "node" not in line and not line.startswith("File ")]
    # TensorFlow appends the failing node's name in [[...]]: not the user's business.
    reason = (re.sub(r"\s*\[\[.*", "", reasons[-1]).split(". ")[0] if reasons
              else "a collective failed")
    return reason[:200]


class StopRequest:
    """Remembers a SIGTERM (Slurm preemption or time limit, via --signal, a launcher passing
    on a stop) or SIGINT (Ctrl-C); the training loop acts on it at its next log step, where
    every rank learns of it together. A second signal changes nothing: the stop under way
    goes on, unless second_interrupt_ends_process is set (a job of one process, where nobody
    else waits for it): then a second Ctrl-C ends the process at once, as Ctrl-C does without
    this handler, keeping the checkpoints already written."""

    def __init__(self):
        self.received = set()
        self.second_interrupt_ends_process = False
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signal_number, self.request)

    def request(self, signal_number, frame):
        self.received.add(signal_number)
        if signal_number == signal.SIGINT and self.second_interrupt_ends_process:
            # The next Ctrl-C reaches the process itself, even inside a long TensorFlow call.
            signal.signal(signal.SIGINT, signal.SIG_DFL)

    @property
    def signal_number(self):
        """The signal to name for the stop (0 for none): SIGINT, the user's own, before
        SIGTERM, which launchers send when they pass a stop on."""
        if signal.SIGINT in self.received:
            return signal.SIGINT
        return min(self.received, default=0)


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


# ---------------------------------------------------------------------------------------------
# The launcher going away, and a rank that stops answering

def horovodrun_pid():
    """The pid of the horovodrun that started this rank on this host, or None.

    horovodrun --mpi replaces itself with `/bin/sh -c "mpirun ..."`, whose death on SIGTERM
    leaves mpirun and the ranks running; horovodrun --gloo runs the ranks under forks of itself.
    Ranks started by mpirun, srun or on another host find none: their launcher signals them."""
    pid = parent_pid(os.getpid())
    while pid > 1:
        arguments = process_arguments(pid)
        if any(os.path.basename(a) == "horovodrun" for a in arguments[:2]):
            return pid
        if arguments[:2] == ["/bin/sh", "-c"] and len(arguments) > 2 and \
                "mpirun" in arguments[2].split(maxsplit=1)[0]:
            return pid
        pid = parent_pid(pid)
    return None


def make_pid():
    """The pid of the `make` that this rank runs under (make train), or None."""
    pid = parent_pid(os.getpid())
    while pid > 1:
        if os.path.basename((process_arguments(pid) or [""])[0]) in ("make", "gmake"):
            return pid
        pid = parent_pid(pid)
    return None


# The signals on which GNU make waits for its children to end and then exits itself.
MAKE_FATAL_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class LauncherWatch:
    """Turns the end of this rank's horovodrun into a stop request (SIGTERM), so signalling the
    launcher stops the whole job through the usual path: checkpoint, then exit 128 + 15.

    Under `make train` it also watches make: on SIGINT sent to make alone (not to its process
    group, as a terminal's Ctrl-C is), make passes nothing on and waits for its children,
    which would train on to --max_steps. Its handler for that signal first resets the signal
    to its default, so the signal leaves make's caught set: that is the stop request."""

    POLL_SECONDS = 1.0

    def __init__(self, stop_request):
        self.stop_request = stop_request
        self.pid = horovodrun_pid()
        self.start_time = process_start_time(self.pid) if self.pid else None
        self.make = make_pid()
        self.make_caught = caught_signals(self.make) if self.make else None
        if self.pid is not None or self.make_caught is not None:
            threading.Thread(target=self._watch, daemon=True, name="launcher watch").start()

    def _make_signal(self):
        caught = caught_signals(self.make)
        if caught is None:  # make is gone
            return signal.SIGTERM
        for number in MAKE_FATAL_SIGNALS:
            bit = 1 << (number - 1)
            if self.make_caught & bit and not caught & bit:
                return number
        return None

    def _watch(self):
        while True:
            if self.pid is not None and process_start_time(self.pid) != self.start_time:
                self.stop_request.request(signal.SIGTERM, None)
                return
            if self.make_caught is not None:
                received = self._make_signal()
                if received:
                    self.stop_request.request(received, None)
                    return
            time.sleep(self.POLL_SECONDS)


class Watchdog:
    """Ends this rank when one phase of training (a step and its all-reduce, a checkpoint) has
    not come back in timeout seconds: another rank hangs (a stopped process, a hung GPU or file
    system) and a collective would wait forever. The line it prints names this rank, its host,
    the step and what it was waiting for; the launcher then ends the others."""

    def __init__(self, timeout_seconds, rank, host):
        self.timeout_seconds, self.rank, self.host = timeout_seconds, rank, host
        self.phase = None
        self.phase_limit, self.phase_flag = timeout_seconds, "--hang_timeout_secs"
        self.since = time.monotonic()
        self.resume_hint = ""  # what a rerun would do, kept current by the training loop
        self.on_hang = None    # run before the process ends (rank 0 releases its train_dir)
        threading.Thread(target=self._watch, daemon=True, name="watchdog").start()

    def waiting_for(self, step, what, timeout=None, flag_name="--hang_timeout_secs"):
        """Mark the start of a phase: step, and what the rank waits for in it. timeout (set by
        flag_name) replaces the usual limit for a phase of its own (the first step); 0 never
        ends the phase."""
        self.phase_limit = self.timeout_seconds if timeout is None else timeout
        self.phase_flag = flag_name
        self.phase, self.since = (step, what), time.monotonic()

    def idle(self):
        self.phase = None

    def _watch(self):
        while True:
            time.sleep(min(1.0, (self.phase_limit or 4.0) / 4))
            phase, waited, limit = self.phase, time.monotonic() - self.since, self.phase_limit
            if phase is not None and limit and waited > limit:
                step, what = phase
                say(f"hvd_cifar: error: rank {self.rank} on {self.host} waited {waited:.0f} s "
                    f"({self.phase_flag} {limit:g}) at step {step} for "
                    f"{what}: a rank or device of the job stopped answering; ending the job"
                    f"{self.resume_hint}", sys.stderr)
                if self.on_hang is not None:
                    self.on_hang()
                # The main thread is blocked inside a collective: only leaving the process
                # ends the wait.
                os._exit(HANG_EXIT_STATUS)


# The status of a rank ended by its watchdog (as `timeout` uses).
HANG_EXIT_STATUS = 124

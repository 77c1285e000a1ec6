"""Watching a training process from beside its loop: stop requests on signals, the launcher
(horovodrun, or make under make train) going away, and the hang watchdog."""
import os
import signal
import sys
import threading
import time

from hvd_cifar.command import say
from hvd_cifar.processes import caught_signals, parent_pid, process_arguments, process_start_time


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


class LauncherAndMakeWatch:
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
        self.thread = None  # nothing to watch: run by hand, without a launcher or make
        if self.pid is not None or self.make_caught is not None:
            self.thread = threading.Thread(target=self._watch, daemon=True,
                                           name="launcher and make watch")
            self.thread.start()

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

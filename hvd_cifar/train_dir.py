"""The train_dir of a run, as rank 0 keeps it: created and checked, locked for one run at a time,
with room for its checkpoints, and a record of how the run was set up so a resume can say what
changed. Nothing here knows about Horovod.

The lock is the file `run.lock` in the train_dir: JSON naming the host (and its boot), process
(and the process's start time), start time and Slurm job of its holder, created whole and
exclusively, and refreshed (its modification time) every LOCK_REFRESH_SECONDS while the run
lives. On the holder's own host the lock is stale exactly when its process is gone (a suspended
run keeps its lock however long it is stopped). Elsewhere it is stale when it belongs to this
same Slurm job (a requeue), or when it has not been refreshed for LOCK_STALE_SECONDS (a holder
on another host that died: process ids of another host mean nothing here, but the file's age
does, on a shared file system too). --take_over_train_dir takes any lock over deliberately.
A takeover is exclusive: of several contenders at once, one wins and the others are refused.
"""
import datetime
import glob
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time

from hvd_cifar.command import UserError, flag_values, say
from hvd_cifar.files import write_atomically
from hvd_cifar.processes import boot_id, process_exists, process_start_time

LOCK_NAME = "run.lock"
LOCK_REFRESH_SECONDS = 15
# Several refreshes missed: the holder is gone (clocks of hosts on one file system agree to well
# within this).
LOCK_STALE_SECONDS = 120
RUN_RECORD_NAME = "run.json"


def create_or_move_aside(train_dir, fresh, take_over=False):
    """Create train_dir (and with --fresh move an old run aside). Taking its lock next is the
    test that it is writable. Whether this call created the folder."""
    if os.path.lexists(train_dir) and not os.path.isdir(train_dir):
        raise UserError(f"--train_dir {train_dir} is a file, not a folder")
    if fresh and os.path.isdir(train_dir) and os.listdir(train_dir):
        move_run_aside(train_dir, take_over)
    created = not os.path.isdir(train_dir)
    try:
        os.makedirs(train_dir, exist_ok=True)
    except OSError as error:
        raise UserError(f"--train_dir {train_dir} is not writable: {error.strerror}") from None
    return created


# What only a run leaves in its folder: --fresh moves aside nothing else.
RUN_FILE = re.compile(r"^(run\.lock|run\.json|train\.log|checkpoint|ckpt-\d+.*|"
                      r"events\.out\.tfevents\..*)$")


def holds_a_run(folder):
    try:
        return any(RUN_FILE.match(entry) for entry in os.listdir(folder))
    except OSError:
        return False


def live_locks_below(folder, skip_own=False):
    """(lock path, holder) of every live run lock in folder or below it (links not followed
    below the top); with skip_own, folder's own lock is not looked at."""
    live = []
    for parent, subfolders, files in os.walk(folder):
        subfolders[:] = [name for name in subfolders
                         if not os.path.islink(os.path.join(parent, name))]
        if LOCK_NAME not in files or (skip_own and parent == folder):
            continue
        view = LockView(parent)
        text, holder = view.read_holder()
        if text is not None and view.stale_reason(holder) is None:
            live.append((view.path, holder))
    return live


def move_run_aside(train_dir, take_over):
    """--fresh: rename the run in train_dir to <train_dir>.previous-<time> (through a link, the
    folder it points to, so the link keeps pointing at the new run). Refused while a run lives
    in it or below it, and when it holds no run (a folder of something else)."""
    live = live_locks_below(train_dir, skip_own=take_over)
    if live:
        path, holder = live[0]
        raise UserError(f"--fresh will not move --train_dir {train_dir} aside: a run is alive "
                        f"in it ({describe(holder)}, lock {path}); wait for that run or stop it")
    if not holds_a_run(train_dir):
        raise UserError(f"--fresh will not move --train_dir {train_dir} aside: it holds no run "
                        "(no checkpoint, run.json or train.log), so it may be something else; "
                        "choose another --train_dir")
    folder = os.path.realpath(train_dir)
    linked = os.path.normpath(folder) != os.path.normpath(os.path.abspath(train_dir))
    if os.path.ismount(folder):
        raise UserError(f"--fresh cannot move --train_dir {train_dir} aside: it is a mount "
                        "point; use a folder inside it as --train_dir")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    previous = f"{folder}.previous-{stamp}"
    mode = os.stat(folder).st_mode & 0o7777
    try:
        os.rename(folder, previous)
        if linked:  # the link's target is made again, so the link keeps working
            os.mkdir(folder, mode)
    except OSError as error:
        raise UserError(f"--fresh cannot move --train_dir {train_dir} aside to {previous}: "
                        f"{error.strerror}") from None
    say(f"--fresh: moved the previous run to {previous}"
        + (f" ({train_dir} links to {folder}, which now starts empty)" if linked else ""))


def remove_unfinished_checkpoints(train_dir):
    """The ckpt-N_temp folders a run that died while saving left behind (TensorFlow renames a
    checkpoint into place only when it is complete); their paths."""
    leftovers = glob.glob(os.path.join(train_dir, "*_temp"))
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return leftovers


# ---------------------------------------------------------------------------------------------
# One run at a time

MAX_PID = 1 << 22
# A takeover in progress that is older than this was abandoned by a contender that died.
TAKEOVER_STALE_SECONDS = 30


class LockView:
    """A train_dir's lock as this process sees it: who holds it, and whether that holder is
    gone (see the module's text). holder is what this process would write to claim it."""

    def __init__(self, train_dir):
        self.train_dir = train_dir
        self.path = os.path.join(train_dir, LOCK_NAME)
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(),
                       "pid_started": process_start_time(os.getpid()), "boot_id": boot_id(),
                       "started": datetime.datetime.now().isoformat(timespec="seconds"),
                       "slurm_job_id": os.environ.get("SLURM_JOB_ID")}

    def read_holder(self):
        """(the lock's text, its holder as a dict: {} when unreadable or not ours); the text
        is None when there is no lock."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read(4096)
        except OSError:
            return None, {}
        try:
            holder = json.loads(raw)
        except ValueError:  # being written, or not ours: judged by its age alone
            holder = None
        return raw, holder if isinstance(holder, dict) else {}

    def age(self):
        try:
            return time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return float("inf")

    def age_words(self):
        age = self.age()
        if age < 0:
            return (f"was refreshed {-age:.0f} s in the future (the clocks of the hosts "
                    "sharing this folder differ)")
        return f"was refreshed {age:.0f} s ago"

    def same_boot(self, other):
        return (other.get("host") == self.holder["host"] and
                other.get("boot_id", self.holder["boot_id"]) == self.holder["boot_id"])

    def stale_reason(self, other):
        """Why the lock's holder `other` is gone, or None while it lives."""
        pid = other.get("pid")
        if isinstance(pid, int) and not isinstance(pid, bool) and self.same_boot(other):
            # On its own host a holder is alive exactly while its process is: however long
            # it was suspended, and whatever the file's age.
            if not 0 < pid < MAX_PID or not process_exists(pid):
                return f"process {pid} of this host is gone"
            started = other.get("pid_started")
            if started is not None and started != process_start_time(pid):
                return f"process {pid} of this host is gone (its id belongs to another now)"
            return None
        if other.get("slurm_job_id") and other.get("slurm_job_id") == self.holder["slurm_job_id"]:
            return f"Slurm requeued job {other['slurm_job_id']}"
        age = self.age()
        if age > LOCK_STALE_SECONDS:
            return f"not refreshed for {age:.0f} s"
        return None


class TrainDirLock(LockView):
    """Rank 0's claim on a train_dir for the life of a run (see the module's text)."""

    def __init__(self, train_dir, take_over=False):
        super().__init__(train_dir)
        self.notes = []
        self._stop = threading.Event()
        self._acquire(take_over)
        self._refresher = threading.Thread(target=self._refresh, daemon=True,
                                           name="train_dir lock")
        self._refresher.start()

    def _acquire(self, take_over):
        if os.path.lexists(self.path) and not os.path.isfile(self.path):
            raise UserError(f"--train_dir {self.train_dir}: its lock {self.path} is not a file; "
                            "remove it if no run is using the folder")
        # A contender that lost a takeover race looks again: the winner's lock is then alive.
        for _ in range(50):
            if self._create(self.path):
                return
            text, other = self.read_holder()
            reason = "--take_over_train_dir" if take_over else self.stale_reason(other)
            if reason is None:
                raise UserError(
                    f"--train_dir {self.train_dir} is in use by another run: "
                    f"{describe(other)}; its lock {self.path} {self.age_words()}. Wait for "
                    "that run, choose another --train_dir, or, if it is gone, pass "
                    "--take_over_train_dir") from None
            if self._take_over(text):
                self.notes.append(f"took over the lock of {describe(other)} ({reason})")
                return
            time.sleep(0.1)
        raise UserError(f"--train_dir {self.train_dir}: could not take over its lock {self.path} "
                        "(other runs keep taking it); try again")

    def _write_own(self, partial):
        try:
            with open(partial, "w") as f:
                f.write(json.dumps(self.holder))
                f.flush()
                os.fsync(f.fileno())
        except OSError as error:
            raise UserError(f"--train_dir {self.train_dir}: cannot write its lock "
                            f"({error.strerror}); nothing was started") from None

    def _create(self, path):
        """Create path holding our holder, whole, only if it does not exist: the text is
        written first under a private name, then hard-linked into place (which fails when
        path exists). Whether it was created."""
        partial = f"{path}.{self.holder['host']}.{os.getpid()}.part"
        try:
            self._write_own(partial)
            try:
                os.link(partial, path)
            except FileExistsError:
                return False
            except OSError as error:
                raise UserError(f"--train_dir {self.train_dir} is not writable: "
                                f"{error.strerror}") from None
            return True
        finally:
            if os.path.lexists(partial):
                os.remove(partial)

    def _take_over(self, judged_text):
        """Replace a stale lock holding judged_text with ours. Contenders first take the
        `run.lock.takeover` file exclusively, then check that the lock is still the one they
        judged stale: of several at once exactly one replaces it."""
        mutex = self.path + ".takeover"
        try:
            if time.time() - os.stat(mutex).st_mtime > TAKEOVER_STALE_SECONDS:
                os.remove(mutex)
        except OSError:
            pass
        if not self._create(mutex):
            return False
        try:
            if self.read_holder()[0] != judged_text:
                return False
            try:
                write_atomically(self.path, self._write_own)
            except OSError as error:
                raise UserError(f"--train_dir {self.train_dir}: cannot take over its lock "
                                f"{self.path} ({error.strerror}); remove it by hand if no run "
                                "is using the folder") from None
            return True
        finally:
            try:
                os.remove(mutex)
            except OSError:
                pass

    def _refresh(self):
        while not self._stop.wait(LOCK_REFRESH_SECONDS):
            try:
                os.utime(self.path)
            except OSError:  # a full or failing disk is reported by the writes that matter
                pass

    def release(self):
        """Remove the lock if it is still ours."""
        self._stop.set()
        _, holder = self.read_holder()
        if holder.get("pid") == self.holder["pid"] and holder.get("host") == self.holder["host"]:
            try:
                os.remove(self.path)
            except OSError:
                pass


def describe(holder):
    if not holder:
        return "an unreadable holder"
    text = (f"host {holder.get('host')}, process {holder.get('pid')}, started "
            f"{holder.get('started')}")
    if holder.get("slurm_job_id"):
        text += f", Slurm job {holder['slurm_job_id']}"
    return text


def _write_text(path, text):
    with open(path, "w") as f:
        f.write(text)


# ---------------------------------------------------------------------------------------------
# Room for checkpoints, and what changed since the last run

def free_bytes(train_dir):
    return shutil.disk_usage(train_dir).free


def read_run_record(train_dir):
    """The set-up the previous run of train_dir recorded, or None."""
    try:
        with open(os.path.join(train_dir, RUN_RECORD_NAME)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def provenance(config, hosts, versions):
    """What a run.json needs besides the set-up to redo the run: every flag, the code's commit
    (and whether its tree had changes), the versions (given), the hosts, and the start time."""
    package = os.path.dirname(os.path.abspath(__file__))

    def git(*args):
        try:
            found = subprocess.run(["git", "-C", package, *args], capture_output=True,
                                   text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return found.stdout.strip() if found.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    command = "python -m hvd_cifar.train " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return {"flags": flag_values(config), "command": command,
            "commit": commit,
            "tree_changed": None if commit is None else bool(git("status", "--porcelain",
                                                                  "--untracked-files=no")),
            "versions": versions, "hosts": hosts,
            "started": datetime.datetime.now().isoformat(timespec="seconds")}


def mpi_version():
    """The first line of `mpirun --version` ("mpirun (Open MPI) 4.1.4"), or None without one."""
    try:
        found = subprocess.run(["mpirun", "--version"], capture_output=True, text=True,
                               timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = found.stdout.strip().splitlines()
    return lines[0] if found.returncode == 0 and lines else None


def write_run_record(train_dir, record):
    write_atomically(os.path.join(train_dir, RUN_RECORD_NAME),
                     lambda partial: _write_text(partial, json.dumps(record, indent=1)))


# The set-up a resume compares, with the words it uses for each: every change that makes the
# resumed run a different experiment.
RECORDED = (("ranks", "ranks"), ("global_batch", "global batch"),
            ("steps_per_epoch", "steps an epoch"), ("lr_rule", "learning-rate rule"),
            ("warmup_epochs", "--warmup_epochs"), ("lr_decay", "--lr_decay"),
            ("momentum", "--momentum"), ("use_fp16", "--use_fp16"),
            ("optimizer", "--optimizer"), ("trust_coefficient", "--trust_coefficient"),
            ("lars_output_layer", "--lars_output_layer"), ("synthetic", "--synthetic"),
            ("data_fingerprint", "the data (fingerprint of its training files)"),
            ("seed", "--seed"), ("augment_on", "distortions on the"))


def changes(previous, current):
    """'name old -> new' for every recorded set-up that differs from the previous run's."""
    if not previous:
        return []
    return [f"{words} {previous[key]} -> {current[key]}" for key, words in RECORDED
            if key in previous and key in current and previous[key] != current[key]]


def with_history(current, previous):
    """current, carrying the set-ups of the earlier starts that differed from it (run.json
    keeps how the run came to be, not only its last set-up)."""
    if not previous:
        return current
    earlier = list(previous.get("earlier_setups", []))
    previous = {k: v for k, v in previous.items() if k != "earlier_setups"}
    if changes(previous, current):
        earlier.append(previous)
    return {**current, "earlier_setups": earlier} if earlier else current

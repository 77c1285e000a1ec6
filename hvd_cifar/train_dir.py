"""The train_dir of a run, as rank 0 keeps it: created and checked, locked for one run at a time,
with room for its checkpoints, and a record of how the run was set up so a resume can say what
changed. Nothing here knows about Horovod.

The lock is the file `run.lock` in the train_dir: JSON naming the host, process, start time
and Slurm job of its holder, created exclusively and refreshed (its modification time) every
LOCK_REFRESH_SECONDS while the run lives. A lock is stale, and taken over with a note, when
its holder is a process of this host that no longer exists, when it belongs to this same Slurm
job (a requeue), or when it has not been refreshed for LOCK_STALE_SECONDS (a holder on another
host that died: process ids of another host mean nothing here, but the file's age does, on a
shared file system too). --take_over_train_dir takes any lock over deliberately.
"""
import datetime
import glob
import json
import os
import shutil
import socket
import threading
import time

from hvd_cifar.config import UserError, say
from hvd_cifar.files import write_atomically

LOCK_NAME = "run.lock"
LOCK_REFRESH_SECONDS = 15
# Several refreshes missed: the holder is gone (clocks of hosts on one file system agree to well
# within this).
LOCK_STALE_SECONDS = 120
RUN_RECORD_NAME = "run.json"


def prepare(train_dir, fresh):
    """Create train_dir (and with --fresh move an old one aside). Taking its lock next is the
    test that it is writable."""
    if fresh and os.path.isdir(train_dir) and os.listdir(train_dir):
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        previous = f"{train_dir.rstrip('/')}.previous-{stamp}"
        os.rename(train_dir, previous)
        say(f"--fresh: moved the previous run to {previous}")
    try:
        os.makedirs(train_dir, exist_ok=True)
    except OSError as error:
        raise UserError(f"--train_dir {train_dir} is not writable: {error.strerror}") from None


def remove_unfinished_checkpoints(train_dir):
    """The ckpt-N_temp folders a run that died while saving left behind (TensorFlow renames a
    checkpoint into place only when it is complete); their paths."""
    leftovers = glob.glob(os.path.join(train_dir, "*_temp"))
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return leftovers


# ---------------------------------------------------------------------------------------------
# One run at a time

def process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class TrainDirLock:
    """Rank 0's claim on a train_dir for the life of a run (see the module's text)."""

    def __init__(self, train_dir, take_over=False):
        self.path = os.path.join(train_dir, LOCK_NAME)
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(),
                       "started": datetime.datetime.now().isoformat(timespec="seconds"),
                       "slurm_job_id": os.environ.get("SLURM_JOB_ID")}
        self.notes = []
        self._stop = threading.Event()
        self._acquire(train_dir, take_over)
        self._refresher = threading.Thread(target=self._refresh, daemon=True,
                                           name="train_dir lock")
        self._refresher.start()

    def _acquire(self, train_dir, take_over):
        text = json.dumps(self.holder)
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            other = self._read_holder()
            reason = "--take_over_train_dir" if take_over else self._stale_reason(other)
            if reason is None:
                raise UserError(
                    f"--train_dir {train_dir} is in use by another run: "
                    f"{describe(other)}; its lock {self.path} was refreshed "
                    f"{self._age():.0f} s ago. Wait for that run, choose another --train_dir, "
                    "or, if it is gone, pass --take_over_train_dir") from None
            self.notes.append(f"took over the lock of {describe(other)} ({reason})")
            write_atomically(self.path, lambda partial: _write_text(partial, text))
            return
        except OSError as error:
            raise UserError(f"--train_dir {train_dir} is not writable: {error.strerror}") from None
        with os.fdopen(descriptor, "w") as f:
            f.write(text)

    def _read_holder(self):
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):  # being written, or not ours: judged by its age alone
            return {}

    def _age(self):
        try:
            return time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return float("inf")

    def _stale_reason(self, other):
        if other.get("host") == self.holder["host"] and isinstance(other.get("pid"), int) \
                and not process_exists(other["pid"]):
            return f"process {other['pid']} of this host is gone"
        if other.get("slurm_job_id") and other.get("slurm_job_id") == self.holder["slurm_job_id"]:
            return f"Slurm requeued job {other['slurm_job_id']}"
        age = self._age()
        if age > LOCK_STALE_SECONDS:
            return f"not refreshed for {age:.0f} s"
        return None

    def _refresh(self):
        while not self._stop.wait(LOCK_REFRESH_SECONDS):
            try:
                os.utime(self.path)
            except OSError:  # a full or failing disk is reported by the writes that matter
                pass

    def release(self):
        """Remove the lock if it is still ours."""
        self._stop.set()
        if self._read_holder().get("pid") == self.holder["pid"] and \
                self._read_holder().get("host") == self.holder["host"]:
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


def write_run_record(train_dir, record):
    write_atomically(os.path.join(train_dir, RUN_RECORD_NAME),
                     lambda partial: _write_text(partial, json.dumps(record, indent=1)))


# The set-up a resume compares, with the words it uses for each.
RECORDED = (("ranks", "ranks"), ("global_batch", "global batch"),
            ("steps_per_epoch", "steps an epoch"), ("lr_rule", "learning-rate rule"),
            ("momentum", "--momentum"), ("use_fp16", "--use_fp16"))


def changes(previous, current):
    """'name old -> new' for every recorded set-up that differs from the previous run's."""
    if not previous:
        return []
    return [f"{words} {previous[key]} -> {current[key]}" for key, words in RECORDED
            if key in previous and previous[key] != current[key]]

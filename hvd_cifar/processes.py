"""Facts about processes on this host, from /proc (Linux): who started whom, when a process
started, which signals it catches. A pid alone can be reused; a pid with its start time and the
host's boot names one process."""
import os


def process_arguments(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def python_pids_with(argument, environment_entries):
    """PIDs of the python processes with argument among their arguments and any of
    environment_entries (e.g. HOROVOD_RANK=1) in their environment: a job's ranks by rank."""
    wanted = {entry.encode() for entry in environment_entries}
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                arguments = f.read().split(b"\0")
            with open(f"/proc/{pid}/environ", "rb") as f:
                environment = set(f.read().split(b"\0"))
        except OSError:
            continue
        if (arguments[0].endswith(b"python") and str(argument).encode() in arguments
                and wanted & environment):
            pids.append(int(pid))
    return pids


def parent_pid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name (field 2) may hold spaces; it ends at the last ')'.
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def process_start_time(pid):
    """When the process started (clock ticks since boot), or None once it has ended: gone, or
    a zombie its parent has not yet reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def caught_signals(pid):
    """The signals process pid has a handler for (its SigCgt mask in /proc), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return None


def boot_id():
    """This boot of this host: process ids and start times mean something only within it."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


"""Keep TensorFlow's and XLA's C++ log lines out of a command's output.

TensorFlow 2.15 logs from C++ through two routes: its own (held back by TF_CPP_MIN_LOG_LEVEL)
and absl's, which XLA uses and that variable does not reach ("Compiled cluster using XLA!",
"SetPriority unimplemented", absl's warning about InitializeLog). Every rank prints them, so
they would bury the log lines and one-line errors. A command's entry point calls
`quiet_native_logs()` before it imports TensorFlow: the process's stderr then goes through a
small filter process that drops those lines and passes everything else on unchanged (Python's
errors, Horovod's own warnings, a fatal C++ line). The filter is a process, not a thread, so it
still passes on the last lines of a process that dies.

    HVD_CIFAR_NATIVE_LOGS=show python -m hvd_cifar.train ...     shows them all again
"""
import os
import re
import subprocess
import sys

SHOW_VARIABLE = "HVD_CIFAR_NATIVE_LOGS"

# A C++ line by TensorFlow's logging ("2026-12-04 22:37:55.869467: E external/...cc:177] ..."),
# by absl's ("I0000 00:00:1796423875.867748   24300 device_compiler.h:186] ..."), absl's
# preamble, and the second line of TensorFlow's CPU-feature notice. Fatal (F) lines stay.
NATIVE_LINE = re.compile(
    rb"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] \S+:\d+\] "
    rb"|[IWE]\d{4} [\d:]+\.\d+ +\d+ \S+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions: .* rebuild TensorFlow)")


def is_native_log_line(line):
    """Whether a line (bytes) is one of TensorFlow's or XLA's non-fatal C++ log lines."""
    return NATIVE_LINE.match(line) is not None


def copy_without_native_lines(source_fd, destination_fd):
    """Copies lines from source_fd to destination_fd until end of file, dropping native ones."""
    pending = b""
    while True:
        chunk = os.read(source_fd, 65536)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        kept = b"".join(line + b"\n" for line in lines if not is_native_log_line(line))
        if kept:
            os.write(destination_fd, kept)
    if pending and not is_native_log_line(pending):
        os.write(destination_fd, pending)


def quiet_native_logs():
    """Sends this process's stderr (fd 2, which TensorFlow's C++ writes to) through the filter.

    Call it before importing TensorFlow. Does nothing when HVD_CIFAR_NATIVE_LOGS=show.
    """
    if os.environ.get(SHOW_VARIABLE, "").lower() in ("show", "1", "yes"):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    read_end, write_end = os.pipe()
    try:
        # Its own session: a terminal's Ctrl-C or a signal to the job's process group must not
        # end it before the process whose lines it passes on. It ends at end of file.
        subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__)],
                         stdin=read_end, stdout=2, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    except OSError:  # no stderr to write to, or no process to spare: keep the lines
        os.close(read_end)
        os.close(write_end)
        return
    os.close(read_end)
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)


if __name__ == "__main__":
    try:
        copy_without_native_lines(0, 1)
    except (BrokenPipeError, KeyboardInterrupt):
        pass

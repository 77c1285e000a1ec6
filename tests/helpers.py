"""Shared test helpers: CIFAR-format fixtures on disk and real subprocess launches."""
import contextlib
import glob
import io
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np

from hvd_cifar.data import records
from hvd_cifar.processes import python_pids_with

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
# Open MPI refuses root unless told; CI and these machines run as root.
ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
       "PYTHONPATH": REPO_ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
LAUNCH_TIMEOUT_SECONDS = 600


def random_images(count, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def write_cifar_dir(root, train_per_file=40, num_test=30, seed=0, labels=None):
    """A cifar-10-batches-bin/ under root with random images; returns (batches_dir, arrays).

    labels(count, offset) gives the label bytes (default: random 0..9)."""
    rng = np.random.default_rng(seed)
    batches_dir = os.path.join(root, records.BATCHES_DIR)
    os.makedirs(batches_dir, exist_ok=True)
    arrays = {}
    offset = 0
    for name, count in ([(n, train_per_file) for n in records.TRAIN_FILES] +
                        [(n, num_test) for n in records.TEST_FILES]):
        images = random_images(count, seed + offset)
        label_bytes = (labels(count, offset) if labels else rng.integers(0, 10, count))
        records.write_records(os.path.join(batches_dir, name), images, label_bytes)
        arrays[name] = (images, np.asarray(label_bytes))
        offset += count
    return batches_dir, arrays


def set_label(path, record, label):
    """Overwrite the label byte of one record of a CIFAR batch file."""
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, records.RECORD_BYTES)
    raw[record, 0] = label
    raw.tofile(path)


def run(args, timeout=LAUNCH_TIMEOUT_SECONDS, env=None, cwd=REPO_ROOT):
    """Run a command to completion; CompletedProcess with text stdout and stderr."""
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                          env={**ENV, **(env or {})}, cwd=cwd)


def python_module(module, *args, **kwargs):
    return run([sys.executable, "-m", module, *map(str, args)], **kwargs)


# The flags of a short real run on tiny_data (200 records: 2 ranks x batch 16 = 6 steps an epoch).
TRAIN_FLAGS = ["--batch_size", "16", "--no_download", "--seed", "3", "--log_frequency", "5"]


def train_command(data_dir, train_dir, max_steps, ranks=2, controller="gloo", extra=()):
    """horovodrun -np ranks python -m hvd_cifar.train on data_dir, as a command line."""
    return [os.path.join(BIN, "horovodrun"), "-np", str(ranks), f"--{controller}",
            os.path.join(BIN, "python"), "-m", "hvd_cifar.train", "--data_dir", str(data_dir),
            "--train_dir", str(train_dir), "--max_steps", str(max_steps), *TRAIN_FLAGS,
            *map(str, extra)]


def in_process(main, *args):
    """A command's main(argv) run in this process, for what ends before any launcher or
    Horovod is involved (flags, help); its exit status and output, as run() gives them."""
    stdout, stderr = io.StringIO(), io.StringIO()
    status = 0
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            main([str(a) for a in args])
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None
                                                                     else 1)
    return subprocess.CompletedProcess(args, status, stdout.getvalue(), stderr.getvalue())


def horovodrun(np_, controller, module, *args, **kwargs):
    """A real `horovodrun -np N --gloo|--mpi python -m module args` on this machine."""
    return run([os.path.join(BIN, "horovodrun"), "-np", str(np_), f"--{controller}",
                sys.executable, "-m", module, *map(str, args)], **kwargs)


def one_step(out, ranks, batch_size, lr, passes=1, examples=16, optimizer="sgd",
             lars_output_layer="trust"):
    """Rank 0's weights before and after one step of tests/one_step.py (and alone, the
    gradient at the start)."""
    helper = [sys.executable, os.path.join(REPO_ROOT, "tests", "one_step.py"), str(out),
              "--batch_size", str(batch_size), "--lr", str(lr), "--examples", str(examples),
              "--passes", str(passes), "--optimizer", optimizer,
              "--lars_output_layer", lars_output_layer]
    launcher = [os.path.join(BIN, "horovodrun"), "-np", str(ranks), "--gloo"] if ranks > 1 else []
    result = run(launcher + helper)
    assert result.returncode == 0, result.stderr[-3000:]
    return np.load(out)


def error_lines(stderr):
    return [line for line in stderr.splitlines() if "hvd_cifar: error:" in line]


def assert_one_line_error(result, *fragments, status=None, launcher=False):
    """The command failed with exactly one `hvd_cifar: error:` line holding every fragment.

    With launcher=True (horovodrun), only the ranks' own tagged lines must be free of a
    traceback: horovodrun --gloo itself raises one when a rank exits non-zero."""
    assert result.returncode != 0, result.stdout + result.stderr
    if status is not None:
        assert result.returncode == status, result.stderr
    checked = ([line for line in result.stderr.splitlines() if line.startswith("[")]
               if launcher else result.stderr.splitlines())
    assert not [line for line in checked if "Traceback" in line], result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def weights_digests(output):
    """{rank: digest} from the trainer's closing line."""
    match = re.search(r"weights sha256 by rank: (.*)", output)
    assert match, output
    # Open MPI may glue its next `[1,0]<stdout>:` tag onto the line: read the pairs exactly.
    return dict(re.findall(r"(\d+)=([0-9a-f]{16})\b", match.group(1)))


def default_sigint():
    """SIGINT as a terminal's job has it: a test run started in the background of a script
    (nohup ... &) ignores SIGINT, its children inherit that, and a shell cannot trap a signal
    ignored on entry, so Ctrl-C tests would test nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def launched(command, env=None):
    """A job in its own process group, which is killed whole however the test ends."""
    job = subprocess.Popen(command, env={**ENV, **(env or {})}, cwd=REPO_ROOT,
                           start_new_session=True, preexec_fn=default_sigint,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield job
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()


def wait_for_step(train_dir, step):
    deadline = time.monotonic() + 300
    while (not logged_steps(train_dir) or logged_steps(train_dir)[-1] < step) and \
            time.monotonic() < deadline:
        time.sleep(0.3)
    assert logged_steps(train_dir) and logged_steps(train_dir)[-1] >= step


def logged_steps(train_dir):
    log = train_dir / "train.log"
    if not log.exists():
        return []
    return [int(s) for s in re.findall(r"step (\d+), loss", log.read_text())]


def trainer_pids(train_dir, environment_entry):
    """PIDs of the python trainer processes training into train_dir whose environment holds
    environment_entry, e.g. HOROVOD_RANK=1 (set per process by horovodrun --gloo)."""
    return python_pids_with(train_dir, [environment_entry])


def scalars(train_dir, tag):
    """{step: value} of a TensorBoard scalar in train_dir's (single) events file."""
    import tensorflow as tf  # only the tests that read events pay for importing it
    values = {}
    for path in glob.glob(os.path.join(train_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


def link_bytes(link):
    statistics = f"/sys/class/net/{link}/statistics"
    return sum(int(open(f"{statistics}/{kind}_bytes").read()) for kind in ("rx", "tx"))


def wait_until_gone(train_dir, timeout=180):
    """Wait until no trainer process of train_dir is left; whether none is."""
    deadline = time.monotonic() + timeout
    while trainer_pids(train_dir, "") and time.monotonic() < deadline:
        time.sleep(0.5)
    return not trainer_pids(train_dir, "")


def fill(folder):
    """Fill folder's file system to the last byte with one file."""
    with open(folder / "filler", "wb", buffering=0) as filler:
        for chunk in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    filler.write(b"\0" * chunk)
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------
# What this host has: expectations are derived from it, never from the machine the suite was
# written on

def tensorflow_gpu_count():
    import tensorflow as tf  # only the tests that ask pay for importing it
    return len(tf.config.list_physical_devices("GPU"))


def nvidia_smi_gpus():
    """What nvidia-smi lists here (a list; None without a working nvidia-smi)."""
    from hvd_cifar import check
    return check.nvidia_smi_gpus()


def expected_devices(ranks_on_host):
    """The trainer's `devices:` words for ranks_on_host ranks of this host: each rank's GPU
    where TensorFlow sees GPUs, else each rank's share of the cores this process may use."""
    if tensorflow_gpu_count():
        return ", ".join(f"{r}=GPU:{r}" for r in range(ranks_on_host))
    threads = max(1, len(os.sched_getaffinity(0)) // ranks_on_host)
    return ", ".join(f"{r}=CPU/{threads} threads" for r in range(ranks_on_host))


def expected_gpu_row_without_tensorflow_gpus(host, require_gpu):
    """(status, detail end) of check's gpus row on a host where TensorFlow sees no GPU, from
    what nvidia-smi lists here."""
    listed = nvidia_smi_gpus()
    if listed:
        return "FAIL", f"nvidia-smi lists {len(listed)} GPUs, TensorFlow sees none"
    if not require_gpu:
        return "PASS", "a CPU job"
    return "FAIL", (f"rank 0 on {host} has no GPU (--require_gpu): "
                    + ("no nvidia-smi, so no NVIDIA driver" if listed is None
                       else "nvidia-smi lists none"))


def gpus_unusable_here():
    """Whether nvidia-smi lists GPUs that TensorFlow does not see (check then fails them)."""
    return bool(nvidia_smi_gpus()) and not tensorflow_gpu_count()

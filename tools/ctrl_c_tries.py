"""Press Ctrl-C on a 2-rank training run several times in a row and report, for each try, the
launcher's exit status, the checkpoints left, and any run.lock, ckpt-N_temp or trainer process
left behind (docs/results/faults.md).

    .venv/bin/python tools/ctrl_c_tries.py --launcher mpi --tries 4 --signals 2
    OMPI_MCA_odls_base_sigkill_timeout=60 .venv/bin/python tools/ctrl_c_tries.py --launcher mpi

Ctrl-C is SIGINT to the launcher's whole process group, sent once training has logged a step;
--signals 2 sends a second one 0.2 s later. Data: a tiny random CIFAR folder made here.
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))

from helpers import BIN, ENV, default_sigint, trainer_pids, write_cifar_dir  # noqa: E402


def command(launcher, data_dir, train_dir):
    flags = ["--batch_size", "16", "--no_download", "--log_frequency", "5"]
    if launcher == "make":
        return ["make", "--no-print-directory", "train", f"DATA_DIR={data_dir}",
                f"TRAIN_DIR={train_dir}", "STEPS=100000", f"TRAIN_FLAGS={' '.join(flags)}"]
    if launcher == "local.sh":
        return [os.path.join(REPO_ROOT, "launch", "local.sh"), "-np", "2", "--data_dir", data_dir,
                "--train_dir", train_dir, "--max_steps", "100000", *flags]
    return [os.path.join(BIN, "horovodrun"), "-np", "2", f"--{launcher}",
            os.path.join(BIN, "python"), "-m", "hvd_cifar.train", "--data_dir", data_dir,
            "--train_dir", train_dir, "--max_steps", "100000", *flags]


def one_try(launcher, signals, data_dir, train_dir):
    job = subprocess.Popen(command(launcher, data_dir, train_dir), env=ENV, cwd=REPO_ROOT,
                           start_new_session=True, preexec_fn=default_sigint,
                           stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    log = os.path.join(train_dir, "train.log")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (
            os.path.exists(log) and re.search(r"step \d+, loss", open(log).read())):
        time.sleep(0.2)
    for _ in range(signals):
        os.killpg(job.pid, signal.SIGINT)
        time.sleep(0.2)
    job.wait(timeout=300)
    deadline = time.monotonic() + 60
    while trainer_pids(train_dir, "") and time.monotonic() < deadline:
        time.sleep(0.5)
    names = os.listdir(train_dir)
    return {"status": job.returncode,
            "checkpoints": sorted(n[:-6] for n in names if n.endswith(".index")),
            "left": sorted(n for n in names if n == "run.lock" or n.endswith("_temp")),
            "processes": len(trainer_pids(train_dir, ""))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launcher", choices=["mpi", "gloo", "make", "local.sh"], default="mpi")
    parser.add_argument("--tries", type=int, default=5)
    parser.add_argument("--signals", type=int, default=1)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="ctrl_c_tries.")
    try:
        write_cifar_dir(os.path.join(work, "data"), train_per_file=40, num_test=30)
        saved = 0
        for attempt in range(args.tries):
            result = one_try(args.launcher, args.signals, os.path.join(work, "data"),
                             os.path.join(work, f"run{attempt}"))
            saved += bool(result["checkpoints"]) and not result["left"]
            print(f"try {attempt}: {result}", flush=True)
        print(f"{args.launcher}, {args.signals} signal(s), odls_base_sigkill_timeout="
              f"{os.environ.get('OMPI_MCA_odls_base_sigkill_timeout', 'default')}: "
              f"{saved} of {args.tries} tries left a checkpoint and nothing else")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

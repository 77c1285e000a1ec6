"""How long a job takes to end after one rank stops answering (kill -STOP), on this machine.

    .venv/bin/python tools/hang_to_exit.py CONTROLLER [TRAINER FLAGS...]
    .venv/bin/python tools/hang_to_exit.py mpi --hang_timeout_secs 60

Starts `horovodrun -np 2 --CONTROLLER` training on synthetic data, waits until step 20 is
logged, stops rank 1 with SIGSTOP and prints the seconds until the launcher exits, its exit
status and the job's `hvd_cifar: error:` lines. Used for the README's numbers.
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

from hvd_cifar.processes import python_pids_with

BIN = os.path.dirname(sys.executable)


def rank_pid(train_dir, rank):
    found = python_pids_with(train_dir, [f"HOROVOD_RANK={rank}", f"OMPI_COMM_WORLD_RANK={rank}"])
    return found[0] if found else None


def main(controller, *flags):
    train_dir = tempfile.mkdtemp(prefix="hang-")
    environment = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1",
                   "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    job = subprocess.Popen(
        [os.path.join(BIN, "horovodrun"), "-np", "2", f"--{controller}", sys.executable, "-m",
         "hvd_cifar.train", "--synthetic", "--batch_size", "16", "--log_frequency", "5",
         "--train_dir", train_dir, *flags],
        env=environment, start_new_session=True, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    log = os.path.join(train_dir, "train.log")
    while not (os.path.exists(log) and re.search(r"step 20,", open(log).read())):
        time.sleep(0.3)
    stopped_at = time.monotonic()
    os.kill(rank_pid(train_dir, 1), signal.SIGSTOP)
    output, _ = job.communicate()
    print(f"{controller}: job ended {time.monotonic() - stopped_at:.1f} s after rank 1 was "
          f"stopped, exit status {job.returncode}")
    for line in output.splitlines():
        if "hvd_cifar: error:" in line:
            print("   ", line)


if __name__ == "__main__":
    main(*sys.argv[1:])

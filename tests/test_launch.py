"""The launchers with the real things: a real Slurm on localhost, horovodrun on this machine."""
import os
import re
import signal
import subprocess
import time

import pytest

from helpers import BIN, REPO_ROOT, launched, run, wait_for_step, weights_digests


TRAIN_FLAGS = ["--max_steps", "6", "--batch_size", "16", "--no_download", "--seed", "3"]



@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node Slurm cluster (slurmctld, slurmd, munged) on localhost; its client env."""
    cluster = tmp_path_factory.mktemp("slurm")
    script = os.path.join(REPO_ROOT, "tests", "cluster", "slurm.sh")
    started = subprocess.run([script, "start", str(cluster)], capture_output=True, text=True)
    if started.returncode != 0:
        pytest.fail("a real Slurm is needed (root and Debian's slurm-wlm and munge): "
                    + started.stderr)
    try:
        yield {"SLURM_CONF": str(cluster / "slurm.conf")}
    finally:
        subprocess.run([script, "stop", str(cluster)], capture_output=True)


@pytest.mark.parametrize("launcher, controller", [("srun", "MPI"), ("horovodrun", "Gloo")])
def test_sbatch_train_sh_forms_one_horovod_job_of_2_tasks(slurm, tiny_data, tmp_path, launcher,
                                                          controller):
    # The CPU-partition overrides of the README, through sbatch flags and environment only.
    result = run(["sbatch", "--wait", "--ntasks-per-node=2", "--gpus-per-task=0",
                  "--cpus-per-task=1", "--time=10",
                  f"--export=ALL,HVD_CIFAR_VENV={os.path.dirname(BIN)},DATA_DIR={tiny_data},"
                  f"LAUNCHER={launcher}",
                  os.path.join(REPO_ROOT, "slurm", "train.sh"), *TRAIN_FLAGS],
                 env=slurm, cwd=tmp_path)
    job_id = re.search(r"Submitted batch job (\d+)", result.stdout).group(1)
    log_path = tmp_path / f"hvd_cifar-{job_id}.out"  # logs per job id, in the submit folder
    log = log_path.read_text()
    assert result.returncode == 0, log[-3000:]
    assert f"2 ranks (2 on this host), {controller} controller" in log
    digests = weights_digests(log)
    assert set(digests) == {"0", "1"} and len(set(digests.values())) == 1
    train_dir = tmp_path / "runs" / f"slurm-{job_id}"  # where the script says
    assert (train_dir / "ckpt-6.index").exists()
    assert "finished at step 6" in (train_dir / "train.log").read_text()


def job_state(slurm, job_id):
    shown = run(["scontrol", "show", "job", job_id], env=slurm).stdout
    return re.search(r"JobState=(\w+)", shown).group(1), shown


def wait_for_job_state(slurm, job_id, states, timeout=300):
    deadline = time.monotonic() + timeout
    while job_state(slurm, job_id)[0] not in states and time.monotonic() < deadline:
        time.sleep(1)
    return job_state(slurm, job_id)


def test_a_requeued_train_sh_resumes_from_its_checkpoint_and_keeps_its_output(
        slurm, tiny_data, tmp_path):
    """scontrol requeue, as preemption does: SIGTERM, a checkpoint, the same job id again (so
    the same TRAIN_DIR), a resume at that step, and the output of both starts in one file."""
    submitted = run(["sbatch", "--parsable", "--ntasks-per-node=2", "--gpus-per-task=0",
                     "--cpus-per-task=1", "--time=10",
                     f"--export=ALL,HVD_CIFAR_VENV={os.path.dirname(BIN)},DATA_DIR={tiny_data}",
                     os.path.join(REPO_ROOT, "slurm", "train.sh"), "--max_steps", "150",
                     "--batch_size", "16", "--no_download", "--seed", "3",
                     "--log_frequency", "5"],
                    env=slurm, cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    train_dir = tmp_path / "runs" / f"slurm-{job_id}"
    wait_for_step(train_dir, 10)
    assert run(["scontrol", "requeue", job_id], env=slurm).returncode == 0
    state, shown = wait_for_job_state(slurm, job_id, {"PENDING"})
    assert state == "PENDING", shown
    # Slurm holds a requeued job for a while (BeginTime); release it now.
    released = run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=slurm)
    assert released.returncode == 0, released.stderr
    state, shown = wait_for_job_state(slurm, job_id, {"COMPLETED", "FAILED", "CANCELLED"})
    assert state == "COMPLETED" and "Restarts=1" in shown, shown
    log = (train_dir / "train.log").read_text()
    stopped = re.search(r"stopped by SIGTERM at step (\d+); checkpoint written", log)
    assert stopped, log[-3000:]
    step = stopped.group(1)
    assert f"resuming from runs/slurm-{job_id}/ckpt-{step} at step {step}" in log
    assert "finished at step 150" in log
    output = (tmp_path / f"hvd_cifar-{job_id}.out").read_text()
    assert output.count("slurm/train.sh: job") == 2
    assert f"stopped by SIGTERM at step {step}" in output and "finished at step 150" in output


def test_sbatch_eval_sh_evaluates_the_run(slurm, tiny_data, tmp_path):
    train_dir = tmp_path / "run"
    trained = run([os.path.join(BIN, "python"), "-m", "hvd_cifar.train", "--data_dir",
                   str(tiny_data), "--train_dir", str(train_dir), *TRAIN_FLAGS])
    assert trained.returncode == 0, trained.stderr[-2000:]
    result = run(["sbatch", "--wait", "--ntasks-per-node=2", "--gpus-per-task=0",
                  "--cpus-per-task=1", "--time=10",
                  f"--export=ALL,HVD_CIFAR_VENV={os.path.dirname(BIN)},DATA_DIR={tiny_data},"
                  f"TRAIN_DIR={train_dir}", os.path.join(REPO_ROOT, "slurm", "eval.sh")],
                 env=slurm, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    log = next(tmp_path.glob("hvd_cifar-eval-*.out")).read_text()
    assert log.count("precision @ 1 = ") == 1
    assert '"num_examples": 30' in (train_dir / "eval.json").read_text()


def test_local_sh_starts_n_cpu_ranks_and_passes_the_train_flags(tiny_data, tmp_path):
    result = run([os.path.join(REPO_ROOT, "launch", "local.sh"), "-np", "2", "--data_dir",
                  str(tiny_data), "--train_dir", str(tmp_path / "run"), *TRAIN_FLAGS])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "launch/local.sh: 2 ranks on" in result.stdout and "mpi controller" in result.stdout
    assert "finished at step 6" in result.stdout


def test_sbatch_check_sh_reports_the_allocation(slurm, tiny_data, tmp_path):
    result = run(["sbatch", "--wait", "--ntasks-per-node=2", "--gpus-per-task=0",
                  "--cpus-per-task=1", "--time=10",
                  f"--export=ALL,HVD_CIFAR_VENV={os.path.dirname(BIN)},DATA_DIR={tiny_data}",
                  os.path.join(REPO_ROOT, "slurm", "check.sh"), "--step_seconds", "0.5",
                  "--allreduce_repeats", "5", "--batch_size", "16"],
                 env=slurm, cwd=tmp_path)
    job_id = re.search(r"Submitted batch job (\d+)", result.stdout).group(1)
    log = (tmp_path / f"hvd_cifar-check-{job_id}.out").read_text()
    assert result.returncode == 0, log[-3000:]
    # srun started the ranks through MPI: MPI alone is checked too.
    assert re.search(r"^mpi +PASS +MPI alone: all-reduce of 2 ranks exact", log, re.MULTILINE)
    assert re.search(r"^allreduce +PASS +sum and broadcast exact over 2 ranks \(MPI\)", log,
                     re.MULTILINE)
    assert re.search(r"^verdict: (pass|warn) \(2 ranks on 1 host\)$", log, re.MULTILINE)


def processes_naming(text):
    """The pids of the processes whose command line holds text."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            continue
    return pids


def test_local_sh_returns_only_after_its_job_has_stopped(tiny_data, tmp_path):
    train_dir = tmp_path / "run"
    command = [os.path.join(REPO_ROOT, "launch", "local.sh"), "-np", "2", "--data_dir",
               str(tiny_data), "--train_dir", str(train_dir), "--max_steps", "100000",
               "--batch_size", "16", "--no_download", "--log_frequency", "5"]
    with launched(command) as job:
        wait_for_step(train_dir, 10)
        os.killpg(job.pid, signal.SIGINT)  # Ctrl-C at the terminal
        # The script's own end, not its output's: the ranks hold the pipe open while they live.
        job.wait(timeout=180)
        left = processes_naming(str(train_dir))  # mpirun and the ranks name the train_dir
    assert job.returncode != 0
    assert left == []
    assert re.search(r"stopped by SIG(INT|TERM) at step \d+|checkpoint of step \d+ written",
                     (train_dir / "train.log").read_text())

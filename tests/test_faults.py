"""Faults a cluster really has: a signalled launcher, a hung rank, two jobs on one train_dir, a
full disk. Each ends in one line, leaves no process behind, and loses no work."""
import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from helpers import (ENV, REPO_ROOT, TRAIN_FLAGS, assert_one_line_error, error_lines, fill,
                     launched, python_module, train_command, trainer_pids, wait_for_step,
                     wait_until_gone)



@pytest.mark.parametrize("controller", ["mpi", "gloo"])
def test_sigterm_to_the_launcher_alone_stops_every_rank_after_a_checkpoint(
        tiny_data, tmp_path, controller):
    train_dir = tmp_path / "run"
    with launched(train_command(tiny_data, train_dir, 100_000, controller=controller)) as job:
        wait_for_step(train_dir, 10)
        os.kill(job.pid, signal.SIGTERM)  # the launcher's pid, as a supervisor or timeout does
        job.communicate(timeout=180)
        assert wait_until_gone(train_dir), "ranks kept running after the launcher was stopped"
    log = (train_dir / "train.log").read_text()
    stopped = re.search(r"stopped by SIGTERM at step (\d+); checkpoint written", log)
    assert stopped, log[-2000:]
    assert (train_dir / f"ckpt-{stopped.group(1)}.index").exists()
    assert not (train_dir / "run.lock").exists()


@pytest.mark.parametrize("controller", ["mpi", "gloo"])
def test_a_stopped_rank_ends_the_job_through_the_watchdog_with_one_line_per_waiting_rank(
        tiny_data, tmp_path, controller):
    train_dir = tmp_path / "run"
    command = train_command(tiny_data, train_dir, 100_000, controller=controller,
                            extra=["--hang_timeout_secs", 15, "--checkpoint_every_steps", 10])
    with launched(command) as job:
        wait_for_step(train_dir, 20)
        hung = trainer_pids(train_dir, "HOROVOD_RANK=1") or trainer_pids(
            train_dir, "OMPI_COMM_WORLD_RANK=1")
        assert len(hung) == 1
        os.kill(hung[0], signal.SIGSTOP)
        output, _ = job.communicate(timeout=240)
    assert job.returncode != 0
    assert wait_until_gone(train_dir)
    lines = error_lines(output)
    assert lines, output[-3000:]
    assert re.search(rf"rank 0 on {re.escape(socket.gethostname())} waited \d+ s "
                     r"\(--hang_timeout_secs 15\) at step \d+ for .+; rerun the same command "
                     r"to resume from step \d+", lines[0]), lines


def test_a_second_job_on_a_train_dir_in_use_refuses_and_touches_nothing(tiny_data, tmp_path):
    train_dir = tmp_path / "run"
    with launched(train_command(tiny_data, train_dir, 100_000, ranks=1)) as first:
        wait_for_step(train_dir, 10)
        before = sorted(os.listdir(train_dir))
        second = python_module("hvd_cifar.train", "--data_dir", tiny_data, "--train_dir",
                               train_dir, "--max_steps", 5, *TRAIN_FLAGS)
        line = assert_one_line_error(second, f"--train_dir {train_dir} is in use by another "
                                     f"run: host {socket.gethostname()}, process",
                                     "--take_over_train_dir", status=1)
        holder = json.loads((train_dir / "run.lock").read_text())
        assert f"process {holder['pid']}, started {holder['started']}" in line
        assert "train.log" in before and set(before) <= set(os.listdir(train_dir))
        assert second.stdout == ""
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    # The first run's log holds its own lines only.
    assert "starting at step 0" in (train_dir / "train.log").read_text()
    assert (train_dir / "train.log").read_text().count("starting at step 0") == 1


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_note(tiny_data, tmp_path):
    train_dir = tmp_path / "run"
    with launched(train_command(tiny_data, train_dir, 100_000, ranks=1)) as killed:
        wait_for_step(train_dir, 10)
        holder = json.loads((train_dir / "run.lock").read_text())
        os.kill(holder["pid"], signal.SIGKILL)  # rank 0 itself, as the OOM killer does
        killed.communicate(timeout=120)
    assert wait_until_gone(train_dir)
    result = python_module("hvd_cifar.train", "--data_dir", tiny_data, "--train_dir", train_dir,
                           "--max_steps", 5, *TRAIN_FLAGS)
    assert result.returncode == 0, result.stderr
    assert (f"took over the lock of host {socket.gethostname()}, process {holder['pid']}, "
            f"started {holder['started']}") in result.stdout
    assert f"process {holder['pid']} of this host is gone" in result.stdout
    assert not (train_dir / "run.lock").exists()


def test_a_stopped_rank_under_gloo_ends_the_others_in_one_line_each(tiny_data, tmp_path):
    train_dir = tmp_path / "run"
    command = train_command(tiny_data, train_dir, 100_000, controller="gloo",
                            extra=["--checkpoint_every_steps", 10])
    with launched(command, env={"HOROVOD_GLOO_TIMEOUT_SECONDS": "20"}) as job:
        wait_for_step(train_dir, 20)
        os.kill(trainer_pids(train_dir, "HOROVOD_RANK=1")[0], signal.SIGSTOP)
        output, _ = job.communicate(timeout=300)
    assert job.returncode != 0
    assert wait_until_gone(train_dir)
    rank_0 = [line for line in error_lines(output) if line.startswith("[0]")]
    assert len(rank_0) == 1, output[-3000:]
    assert re.search(rf"rank 0 on {re.escape(socket.gethostname())} lost the other ranks at "
                     r"step \d+ \(.+\); rerun the same command to resume from step \d+",
                     rank_0[0]), rank_0
    assert "Traceback" not in "".join(l for l in output.splitlines() if l.startswith("[0]"))


def test_a_lock_of_another_host_is_stale_only_when_it_stopped_being_refreshed(
        tiny_data, tmp_path):
    train_dir = tmp_path / "run"
    os.makedirs(train_dir)
    lock = train_dir / "run.lock"
    lock.write_text(json.dumps({"host": "node-elsewhere", "pid": 1, "started": "x",
                                "slurm_job_id": "77"}))
    args = ["--data_dir", tiny_data, "--train_dir", train_dir, "--max_steps", 5, *TRAIN_FLAGS]
    refused = python_module("hvd_cifar.train", *args)
    assert_one_line_error(refused, "host node-elsewhere, process 1, started x, Slurm job 77")
    requeued = python_module("hvd_cifar.train", *args, env={"SLURM_JOB_ID": "77"})
    assert requeued.returncode == 0, requeued.stderr
    assert "Slurm requeued job 77" in requeued.stdout
    lock.write_text(json.dumps({"host": "node-elsewhere", "pid": 1, "started": "x"}))
    old = time.time() - 600
    os.utime(lock, (old, old))
    stale = python_module("hvd_cifar.train", *args, "--max_steps", 10)
    assert stale.returncode == 0, stale.stderr
    assert re.search(r"not refreshed for \d+ s", stale.stdout)


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_full_disk_ends_every_rank_in_one_line_and_keeps_the_last_checkpoint(
        tiny_data, small_disk, ranks):
    train_dir = small_disk / "run"
    result = subprocess.run(
        train_command(tiny_data, train_dir, 30, ranks=ranks,
                      extra=["--checkpoint_every_steps", 10, "--keep_checkpoints", 3]),
        env={**ENV, "TF_CPP_MIN_LOG_LEVEL": "2"}, cwd=REPO_ROOT, capture_output=True,
        text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    lines = error_lines(output)
    assert len(lines) == 1, output[-3000:]
    assert re.search(rf"cannot write checkpoint 20 to --train_dir {train_dir}: .*No space "
                     r"left on device.*; a checkpoint needs 12.\d MB, \d+.\d MB are free; "
                     rf"the newest complete checkpoint is {train_dir}/ckpt-10", lines[0]), lines
    assert "Traceback" not in "".join(l for l in output.splitlines() if l.startswith("["))
    assert sorted(p.name for p in train_dir.glob("*_temp")) == []
    assert (train_dir / "ckpt-10.index").exists()
    assert "warning: --train_dir" in result.stdout and "keeping 3 checkpoints" in result.stdout


def test_a_disk_that_fills_between_checkpoints_ends_every_rank_at_a_log_write(
        tiny_data, small_disk):
    """The disk fills while training: the next write of train.log or of the TensorBoard events
    fails, every rank stops in one line naming it, and the log and checkpoint stay whole."""
    train_dir = small_disk / "run"
    first = subprocess.run(train_command(tiny_data, train_dir, 10), env=ENV, cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    checkpoint = (train_dir / "ckpt-10.data-00000-of-00001").read_bytes()
    command = train_command(tiny_data, train_dir, 1_000_000,
                            extra=["--checkpoint_every_steps", 100_000, "--log_frequency", 1])
    with launched(command, env={"TF_CPP_MIN_LOG_LEVEL": "2"}) as job:
        wait_for_step(train_dir, 15)
        fill(small_disk)
        logged_when_full = (train_dir / "train.log").read_text()
        output, _ = job.communicate(timeout=300)
        assert wait_until_gone(train_dir)
    assert job.returncode != 0
    lines = error_lines(output)
    assert len(lines) == 1, output[-3000:]
    assert re.search(rf"cannot write ({train_dir}/train.log|the TensorBoard events in "
                     rf"{train_dir}): .*No space left on device", lines[0]), lines
    assert "function_node" not in lines[0]
    assert "Traceback" not in "".join(l for l in output.splitlines() if l.startswith("["))
    assert (train_dir / "train.log").read_text().startswith(logged_when_full)
    assert (train_dir / "ckpt-10.data-00000-of-00001").read_bytes() == checkpoint
    assert sorted(p.name for p in train_dir.glob("*_temp")) == []

"""Interrupted runs and broken checkpoints: stop cleanly, lose nothing, say what is wrong."""
import os
import re
import signal
import subprocess
import time

import pytest
import tensorflow as tf

from helpers import (ENV, REPO_ROOT, TRAIN_FLAGS, assert_one_line_error, launched,
                     logged_steps, python_module, train_command, trainer_pids, wait_for_step,
                     weights_digests)






def test_ctrl_c_checkpoints_the_current_step_and_the_rerun_continues_exactly(tiny_data, tmp_path):
    train_dir = tmp_path / "run"
    with launched(train_command(tiny_data, train_dir, 100_000)) as job:
        wait_for_step(train_dir, 20)
        # Ctrl-C in a terminal: SIGINT to the launcher's whole process group.
        os.killpg(job.pid, signal.SIGINT)
        output, _ = job.communicate(timeout=120)
    assert job.returncode != 0
    stopped = re.search(r"stopped by SIG\w+ at step (\d+); checkpoint written", output)
    assert stopped, output[-3000:]
    stop_step = int(stopped.group(1))
    assert stop_step >= 20  # the step completed when the signal arrived
    assert (train_dir / f"ckpt-{stop_step}.index").exists()
    assert "Traceback" not in "".join(line for line in output.splitlines()
                                      if line.startswith("["))  # the ranks stopped cleanly

    final_step = stop_step + 10
    resumed = subprocess.run(train_command(tiny_data, train_dir, final_step), env=ENV,
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {train_dir}/ckpt-{stop_step} at step {stop_step}" in resumed.stdout
    straight = subprocess.run(train_command(tiny_data, tmp_path / "straight", final_step),
                              env=ENV, cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=600)
    assert weights_digests(resumed.stdout) == weights_digests(straight.stdout)


def test_a_corrupt_checkpoint_is_named_and_kept(tiny_data, tmp_path):
    train_dir = tmp_path / "run"
    args = ["--data_dir", tiny_data, "--train_dir", train_dir, *TRAIN_FLAGS]
    assert python_module("hvd_cifar.train", *args, "--max_steps", 5).returncode == 0
    data_file = train_dir / "ckpt-5.data-00000-of-00001"
    data_file.write_bytes(data_file.read_bytes()[:1000])
    result = python_module("hvd_cifar.train", *args, "--max_steps", 10)
    assert_one_line_error(result, f"checkpoint {train_dir}/ckpt-5", "--fresh", status=1)
    assert data_file.stat().st_size == 1000  # nothing overwritten or deleted
    evaluate = python_module("hvd_cifar.evaluate", "--data_dir", tiny_data, "--checkpoint_dir",
                             train_dir, "--run_once")
    assert_one_line_error(evaluate, f"checkpoint {train_dir}/ckpt-5", status=1)


def test_a_checkpoint_of_a_different_model_is_refused(tiny_data, tmp_path):
    train_dir = tmp_path / "other"
    train_dir.mkdir()
    other = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(3)])
    tf.train.Checkpoint(model=other, global_step=tf.Variable(7, dtype=tf.int64)).save(
        str(train_dir / "ckpt"))
    result = python_module("hvd_cifar.train", "--data_dir", tiny_data, "--train_dir",
                           train_dir, *TRAIN_FLAGS, "--max_steps", 10)
    assert_one_line_error(result, f"checkpoint {train_dir}/ckpt-1 does not fit this model",
                          status=1)
    predict = python_module("hvd_cifar.predict", "--checkpoint_dir", train_dir,
                            os.path.join(REPO_ROOT, "README.md"))
    assert_one_line_error(predict, "does not fit this model", status=1)


# The variable each launcher sets to a process's rank.
RANK_VARIABLE = {"gloo": "HOROVOD_RANK", "mpi": "OMPI_COMM_WORLD_RANK"}


@pytest.mark.parametrize("controller", ["gloo", "mpi"])
def test_a_killed_rank_ends_the_job_and_the_rerun_loses_at_most_one_checkpoint_interval(
        tiny_data, tmp_path, controller):
    train_dir = tmp_path / "run"
    command = train_command(tiny_data, train_dir, 100_000, controller=controller) + [
        "--checkpoint_every_steps", "10"]
    with launched(command) as job:
        wait_for_step(train_dir, 25)
        [victim] = trainer_pids(train_dir, f"{RANK_VARIABLE[controller]}=1")
        os.kill(victim, signal.SIGKILL)
        killed_at = logged_steps(train_dir)[-1]
        # No hang: the launcher sees the dead rank and ends the job (communicate would time out).
        job.communicate(timeout=180)
    assert job.returncode != 0
    assert trainer_pids(train_dir, f"{RANK_VARIABLE[controller]}=0") == []  # no rank lingers

    resumed = subprocess.run(train_command(tiny_data, train_dir, killed_at + 10), env=ENV,
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    resumed_from = int(re.search(r"resuming from .*ckpt-(\d+) at step", resumed.stdout).group(1))
    assert killed_at - resumed_from <= 10
    assert f"finished at step {killed_at + 10}" in resumed.stdout


def saving_step(train_dir):
    """The step of a checkpoint being written now (TensorFlow's ckpt-N_temp folder), or None."""
    try:
        names = os.listdir(train_dir)
    except FileNotFoundError:
        return None
    temp = [int(m.group(1)) for m in map(re.compile(r"ckpt-(\d+)_temp$").match, names) if m]
    return temp[0] if temp else None


def test_rank_0_killed_mid_save_leaves_the_previous_checkpoint_loadable(tiny_data, tmp_path):
    train_dir = tmp_path / "run"
    command = train_command(tiny_data, train_dir, 100_000) + ["--checkpoint_every_steps", "2"]
    with launched(command) as job:
        wait_for_step(train_dir, 10)
        [rank_0] = trainer_pids(train_dir, "HOROVOD_RANK=0")
        interrupted, deadline = None, time.monotonic() + 300
        while interrupted is None and job.poll() is None:
            assert time.monotonic() < deadline, "no save of rank 0 was caught in 300 s"
            if saving_step(train_dir) is None:
                time.sleep(0.001)  # often: a save lasts milliseconds
                continue
            # Freeze rank 0, then make sure the save is still unfinished before killing it.
            os.kill(rank_0, signal.SIGSTOP)
            interrupted = saving_step(train_dir)
            if interrupted is None:
                os.kill(rank_0, signal.SIGCONT)
        os.kill(rank_0, signal.SIGKILL)
        job.communicate(timeout=180)
    assert interrupted is not None and job.returncode != 0
    # The kill landed inside the save of step `interrupted`; TensorFlow's checkpoint file
    # still names the one before, which is complete.
    latest = tf.train.latest_checkpoint(str(train_dir))
    assert latest == str(train_dir / f"ckpt-{interrupted - 2}")

    resumed = subprocess.run(train_command(tiny_data, train_dir, interrupted + 4), env=ENV,
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {latest} at step {interrupted - 2}" in resumed.stdout
    assert f"finished at step {interrupted + 4}" in resumed.stdout

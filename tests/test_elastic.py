"""Elastic training with real horovodrun --min-np/--max-np --host-discovery-script (Gloo).

Two "hosts" on this machine: localhost and 127.0.0.1 are different host names to Horovod, and
both are started locally. The hosts file the discovery script reads is edited mid-run."""
import contextlib
import os
import re
import signal

import pytest

from helpers import (REPO_ROOT, assert_one_line_error, launched, logged_steps, python_module,
                     run, trainer_pids, wait_for_step, weights_digests)

COMMIT_EVERY = 5
MAX_STEPS = 400
ELASTIC_TIMEOUT_SECONDS = 400


def elastic_command(hosts_file, data_dir, train_dir, *train_flags):
    return ["bash", os.path.join(REPO_ROOT, "launch", "elastic.sh"), str(hosts_file), "1", "2",
            "--data_dir", str(data_dir), "--train_dir", str(train_dir), "--no_download",
            "--max_steps", str(MAX_STEPS), "--batch_size", "16", "--log_frequency", "5",
            "--commit_every_steps", str(COMMIT_EVERY), "--threads_per_rank", "1", *train_flags]


def write_hosts(path, *hosts):
    path.write_text("".join(f"{host}:1\n" for host in hosts))


def rank_counts(output):
    """The sizes the job ran at, in order (rank 0 prints one line per (re)start)."""
    return [int(n) for n in re.findall(r"hvd_cifar: (\d+) ranks? \(", output)]


@contextlib.contextmanager
def elastic_job_at_step_20(data_dir, tmp_path, *hosts, train_flags=()):
    """(job, hosts file, train_dir) of an elastic job on hosts, once it has logged step 20."""
    hosts_file, train_dir = tmp_path / "hosts", tmp_path / "run"
    write_hosts(hosts_file, *hosts)
    # lo: every "host" is this machine (without an interface Horovod waits for two hosts).
    with launched(elastic_command(hosts_file, data_dir, train_dir, *train_flags),
                  env={"NETWORK_INTERFACE": "lo"}) as job:
        wait_for_step(train_dir, 20)
        yield job, hosts_file, train_dir


def finish(job):
    output, _ = job.communicate(timeout=ELASTIC_TIMEOUT_SECONDS)
    assert job.returncode == 0, output[-4000:]
    assert f"finished at step {MAX_STEPS}" in output, output[-4000:]
    return output


def test_a_host_removed_from_discovery_leaves_and_training_goes_on_at_the_lower_rate(
        tiny_data, tmp_path):
    with elastic_job_at_step_20(tiny_data, tmp_path, "localhost", "127.0.0.1") as (
            job, hosts, train_dir):
        write_hosts(hosts, "localhost")
        output = finish(job)
    assert rank_counts(output)[:1] == [2] and rank_counts(output)[-1] == 1, output[-4000:]
    # The rate follows the workers: 0.1 x 2 with 2, then 0.1 alone.
    assert "learning rate 0.2 (linear scaling: 0.1 x 2)" in output
    assert "learning rate 0.1 (linear scaling: 0.1 x 1)" in output
    continued = [int(s) for s in re.findall(r"continuing at step (\d+)", output)]
    assert continued and continued[-1] >= 20 and continued[-1] % COMMIT_EVERY == 0
    assert (train_dir / f"ckpt-{MAX_STEPS}.index").exists()


def test_a_killed_worker_is_dropped_and_no_step_is_lost_beyond_the_last_commit(
        tiny_data, tmp_path):
    with elastic_job_at_step_20(tiny_data, tmp_path, "localhost", "127.0.0.1") as (
            job, _, train_dir):
        [victim] = trainer_pids(train_dir, "HOROVOD_HOSTNAME=127.0.0.1")
        os.kill(victim, signal.SIGKILL)
        # Every logged step is a commit (log every 5, commit every 5), so the rollback goes
        # no further back than the last step logged before the kill.
        logged_before_kill = logged_steps(train_dir)[-1]
        output = finish(job)
    assert rank_counts(output)[-1] == 1, output[-4000:]
    continued = [int(s) for s in re.findall(r"continuing at step (\d+)", output)]
    assert continued and continued[-1] >= logged_before_kill, output[-4000:]
    assert list(weights_digests(output)) == ["0"]


def test_an_added_host_joins_with_the_current_state(tiny_data, tmp_path):
    # LARS with momentum: the state a joiner must receive includes the optimizer's slots.
    with elastic_job_at_step_20(tiny_data, tmp_path, "localhost",
                                train_flags=("--optimizer", "lars", "--momentum", "0.9",
                                             "--trust_coefficient", "0.0025")) as (
            job, hosts, _):
        write_hosts(hosts, "localhost", "127.0.0.1")
        output = finish(job)
    assert rank_counts(output)[0] == 1 and rank_counts(output)[-1] == 2, output[-4000:]
    joined_at = int(re.findall(r"continuing at step (\d+)", output)[-1])
    assert joined_at >= 20
    # The newcomer received rank 0's weights and momentum: both end identical (a joiner that
    # kept its own fresh weights, or zero momentum, would differ).
    digests = weights_digests(output)
    assert len(digests) == 2 and len(set(digests.values())) == 1


def test_elastic_outside_an_elastic_launch_is_one_line_error(tiny_data, tmp_path):
    result = python_module("hvd_cifar.train", "--elastic", "--data_dir", tiny_data,
                           "--train_dir", tmp_path / "run", "--max_steps", 5)
    assert_one_line_error(result, "--elastic needs an elastic launch", status=1)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("min_np, max_np, fragment", [
    ("x", "2", "MIN_NP and MAX_NP must be positive integers, got 'x'"),
    ("3", "4", "lists 1 slots, fewer than MIN_NP 3"),
])
def test_elastic_launcher_refuses_bad_sizes(tmp_path, min_np, max_np, fragment):
    hosts = tmp_path / "hosts"
    write_hosts(hosts, "localhost")
    result = run(["bash", os.path.join(REPO_ROOT, "launch", "elastic.sh"), str(hosts), min_np,
                  max_np, "--max_steps", "5"])
    assert_one_line_error(result, fragment, status=2)

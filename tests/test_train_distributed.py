"""The Horovod driver under real `horovodrun -np 2` (Gloo and MPI) and mpirun on this machine."""
import glob
import os
import re
import sys

import numpy as np
import pytest

from helpers import (assert_one_line_error, expected_devices, horovodrun, one_step,
                     python_module, run, scalars, weights_digests)


# 5 files x 40 = 200 records: at 2 ranks x batch 16 a shard of 100 gives 6 steps an epoch.
TRAIN_ARGS = ("--batch_size", 16, "--log_frequency", 5, "--no_download", "--seed", 3)



def train_2_ranks(controller, data_dir, train_dir, *args):
    result = horovodrun(2, controller, "hvd_cifar.train", "--data_dir", data_dir,
                        "--train_dir", train_dir, *TRAIN_ARGS, *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def rank_of(line):
    """The rank horovodrun tags an output line with: `[0]<stdout>:` (Gloo), `[1,0]<stdout>:`
    (Open MPI: job, rank)."""
    return int(re.match(r"\[(?:\d+,)?(\d+)\]", line).group(1))


@pytest.mark.parametrize("controller", ["gloo", "mpi"])
def test_two_ranks_train_as_one_job_with_identical_weights_and_only_rank_0_writes(
        tiny_data, tmp_path, controller):
    train_dir = tmp_path / "run"
    result = train_2_ranks(controller, tiny_data, train_dir, "--max_steps", 12,
                           "--checkpoint_every_steps", 5)
    output = result.stdout
    name = {"gloo": "Gloo", "mpi": "MPI"}[controller]
    assert (f"2 ranks (2 on this host), {name} controller, devices: "
            f"{expected_devices(2)}") in output, output
    digests = weights_digests(output)
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]
    # The log lines come from rank 0 alone.
    step_lines = [line for line in output.splitlines() if re.search(r"step \d+, loss = ", line)]
    assert len(step_lines) == 3 and {rank_of(line) for line in step_lines} == {0}
    assert sorted(os.path.basename(p) for p in glob.glob(str(train_dir / "*.index"))) == [
        "ckpt-10.index", "ckpt-12.index", "ckpt-5.index"]
    assert len(glob.glob(str(train_dir / "events.out.tfevents.*"))) == 1
    assert sorted(os.listdir(train_dir)) == sorted(
        ["checkpoint", "train.log", "run.json",
         os.path.basename(glob.glob(str(train_dir / "events*"))[0])]
        + [f"ckpt-{s}.{ext}" for s in (5, 10, 12) for ext in ("index", "data-00000-of-00001")])
    # The global batch is 32 and the examples/sec count all ranks.
    assert "global batch 32 (16 x 2 ranks x 1 pass), 6 steps an epoch" in output


@pytest.mark.parametrize("ranks, batch_size, lr, passes", [
    (2, 8, 0.05, 1),   # two ranks of 8 at 0.05 x 2 ranks
    (1, 8, 0.05, 2),   # one rank, two backward passes of 8 averaged locally, 0.05 x 2 passes
])
def test_one_step_equals_one_process_taking_all_16_examples_at_once(
        tmp_path, ranks, batch_size, lr, passes):
    distributed = one_step(tmp_path / "distributed.npz", ranks, batch_size, lr, passes)
    single = one_step(tmp_path / "single.npz", 1, 16, 0.1)
    assert float(distributed["learning_rate"]) == pytest.approx(0.1)
    before = [k for k in single.files if k.startswith("before_")]
    for key in before:  # the same starting point...
        np.testing.assert_array_equal(single[key], distributed[key])
    for key in (k.replace("before", "after") for k in before):
        # ...and the same update: the mean over 2 x 8 examples equals the mean over 16.
        np.testing.assert_allclose(distributed[key], single[key], rtol=1e-5, atol=1e-6)
        assert not np.allclose(single[key], single[key.replace("after", "before")])
    # One step whatever the passes: the step counts once and the averages move once, with the
    # tutorial's decay at num_updates 1, min(0.9999, 2 / 11), from the starting weights.
    assert int(distributed["global_step"]) == 1
    decay = 2 / 11
    for key in before:
        start, end = distributed[key], distributed[key.replace("before", "after")]
        np.testing.assert_allclose(distributed[key.replace("before", "average")],
                                   decay * start + (1 - decay) * end, rtol=1e-5, atol=1e-6)


def test_the_logged_rate_warms_up_to_lr_times_ranks_then_decays_and_a_moved_end_is_said(
        tiny_data, tmp_path):
    # 6 steps an epoch, warm-up 2 epochs = 12 steps from 0.1 to 0.2 (no cap), then
    # (1 - progress)^2 over the 8 steps to --max_steps.
    train_dir = tmp_path / "run"
    flags = ("--warmup_epochs", 2, "--max_lr", 0, "--lr_decay", "polynomial")
    result = train_2_ranks("gloo", tiny_data, train_dir, "--max_steps", 20, *flags)
    assert ("learning rate 0.2 (linear scaling: 0.1 x 2, polynomial decay to 0 at step 20), "
            "warm-up 12 steps") in result.stdout
    rates = scalars(str(train_dir), "learning_rate")
    # Logged at step N: the rate of the update that made step N (taken at step N - 1).
    assert rates[5] == pytest.approx(0.1 + 0.1 * 4 / 12)
    assert rates[10] == pytest.approx(0.1 + 0.1 * 9 / 12)
    assert rates[15] == pytest.approx(0.2 * (1 - 2 / 8) ** 2)
    assert rates[20] == pytest.approx(0.2 * (1 - 7 / 8) ** 2)
    # Training on moves the decay's end, so the resumed run is not the one planned: said.
    longer = train_2_ranks("gloo", tiny_data, train_dir, "--max_steps", 24, *flags)
    assert ("resuming with changes: learning-rate rule linear scaling: 0.1 x 2, polynomial "
            "decay to 0 at step 20 -> linear scaling: 0.1 x 2, polynomial decay to 0 at step "
            "24") in longer.stdout
    assert scalars(str(train_dir), "learning_rate")[24] == pytest.approx(
        0.2 * (1 - 11 / 12) ** 2)


@pytest.mark.parametrize("optimizer", ["sgd", "lars"])
def test_a_rerun_resumes_exactly_where_the_first_run_stopped(tiny_data, tmp_path, optimizer):
    flags = ("--optimizer", optimizer, "--momentum", 0.9 if optimizer == "lars" else 0.0)
    uninterrupted = train_2_ranks("gloo", tiny_data, tmp_path / "a", "--max_steps", 20, *flags)
    first = train_2_ranks("gloo", tiny_data, tmp_path / "b", "--max_steps", 10, *flags)
    assert "starting at step 0" in first.stdout
    resumed = train_2_ranks("gloo", tiny_data, tmp_path / "b", "--max_steps", 20, *flags)
    assert f"resuming from {tmp_path}/b/ckpt-10 at step 10" in resumed.stdout
    assert "finished at step 20" in resumed.stdout
    # Same data position, learning rate, optimizer and moving averages: the same weights.
    assert weights_digests(resumed.stdout) == weights_digests(uninterrupted.stdout)
    a_losses, b_losses = (scalars(str(tmp_path / d), "loss") for d in "ab")
    assert sorted(b_losses) == [5, 10, 15, 20]
    for step in (15, 20):
        assert b_losses[step] == pytest.approx(a_losses[step], rel=1e-5)
    for step in (5, 10, 15, 20):
        assert scalars(str(tmp_path / "b"), "learning_rate")[step] == pytest.approx(
            scalars(str(tmp_path / "a"), "learning_rate")[step])


def test_the_device_path_trains_and_resumes_to_the_host_paths_weights(tiny_data, tmp_path):
    """Batches built inside the training step (--augment_on device, here on the CPU) equal
    tf.data's on the host, through two epochs and a resume; the log says where the
    distortions ran and how long the ranks waited for input."""
    host = train_2_ranks("gloo", tiny_data, tmp_path / "host", "--max_steps", 20,
                         "--augment_on", "host")
    assert "warm-up 30 steps, distortions on the host" in host.stdout
    first = train_2_ranks("gloo", tiny_data, tmp_path / "device", "--max_steps", 10,
                          "--augment_on", "device")
    assert "distortions on the device" in first.stdout
    resumed = train_2_ranks("gloo", tiny_data, tmp_path / "device", "--max_steps", 20,
                            "--augment_on", "device")
    assert "resuming from" in resumed.stdout and "finished at step 20" in resumed.stdout
    assert weights_digests(resumed.stdout) == weights_digests(host.stdout)
    waits = re.findall(r"step \d+, loss = .*; (\d+)% waiting for input\)", host.stdout)
    assert len(waits) == 4 and all(0 <= int(w) <= 100 for w in waits)
    for path in ("host", "device"):
        shares = scalars(str(tmp_path / path), "input_wait_share")
        assert sorted(shares) == [5, 10, 15, 20] and all(0 <= v < 1 for v in shares.values())


def test_fresh_moves_the_previous_run_aside_and_starts_at_step_0(tiny_data, tmp_path):
    train_dir = tmp_path / "run"
    train_2_ranks("gloo", tiny_data, train_dir, "--max_steps", 5)
    again = train_2_ranks("gloo", tiny_data, train_dir, "--max_steps", 5, "--fresh")
    assert "starting at step 0" in again.stdout
    previous = glob.glob(f"{train_dir}.previous-*")
    assert len(previous) == 1
    assert os.path.exists(os.path.join(previous[0], "ckpt-5.index"))
    assert os.path.exists(train_dir / "ckpt-5.index")
    # Without --fresh a finished run is resumed, not repeated.
    third = train_2_ranks("gloo", tiny_data, train_dir, "--max_steps", 5)
    assert "resuming from" in third.stdout and "at step 5" in third.stdout


def test_a_diverging_run_stops_every_rank_with_one_message(tiny_data, tmp_path):
    result = horovodrun(2, "gloo", "hvd_cifar.train", "--data_dir", tiny_data, "--train_dir",
                        tmp_path / "run", *TRAIN_ARGS, "--max_steps", 50, "--lr", 1e5,
                        "--max_lr", 0, "--warmup_epochs", 0)
    line = assert_one_line_error(result, "training diverged", "learning rate 2e+05",
                                 "linear scaling", launcher=True)
    assert rank_of(line) == 0  # said once, by rank 0; rank 1 stopped at the same step
    assert not glob.glob(str(tmp_path / "run" / "ckpt-*"))  # no NaN checkpoint


def test_mpirun_starts_the_same_job(tiny_data, tmp_path):
    result = run(["mpirun", "-np", "2", "--bind-to", "none", sys.executable, "-m",
                  "hvd_cifar.train", "--data_dir", str(tiny_data), "--train_dir",
                  str(tmp_path / "run"), *map(str, TRAIN_ARGS), "--max_steps", "6"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 ranks (2 on this host), MPI controller" in result.stdout
    digests = weights_digests(result.stdout)
    assert digests["0"] == digests["1"]


def test_one_worker_alone_is_a_job_of_size_1(tiny_data, tmp_path):
    result = python_module("hvd_cifar.train", "--data_dir", tiny_data, "--train_dir",
                           tmp_path / "run", *TRAIN_ARGS, "--max_steps", 4)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 rank (1 on this host)" in result.stdout
    assert "learning rate 0.1 (linear scaling: 0.1 x 1), warm-up 0 steps" in result.stdout


LARS = ("--optimizer", "lars", "--momentum", 0.9)


# Each float16 option runs under LARS, which wraps the tutorial's SGD: one run covers both.
@pytest.mark.parametrize("flags", [
    ("--xla", "on"), (*LARS, "--fp16_allreduce", "--backward_passes_per_step", 2),
    (*LARS, "--use_fp16")])
def test_float16_and_xla_options_train_two_ranks_to_identical_weights(tiny_data, tmp_path,
                                                                     flags):
    result = train_2_ranks("gloo", tiny_data, tmp_path / "run", "--max_steps", 6, *flags)
    digests = weights_digests(result.stdout)
    assert digests["0"] == digests["1"]
    losses = scalars(str(tmp_path / "run"), "loss")
    assert all(np.isfinite(v) for v in losses.values()) and len(losses) == 2


def test_backward_passes_per_step_counts_synchronized_steps(tiny_data, tmp_path):
    result = train_2_ranks("gloo", tiny_data, tmp_path / "run", "--max_steps", 6,
                           "--backward_passes_per_step", 2)
    # 100 records a shard, batch 16: 6 batches, so 3 steps an epoch of 2 passes each.
    assert "global batch 64 (16 x 2 ranks x 2 passes), 3 steps an epoch" in result.stdout
    assert "finished at step 6" in result.stdout
    digests = weights_digests(result.stdout)
    assert digests["0"] == digests["1"]


def test_an_exploding_loss_stops_every_rank_with_the_policy_in_the_message(tiny_data, tmp_path):
    result = horovodrun(2, "gloo", "hvd_cifar.train", "--data_dir", tiny_data, "--train_dir",
                        tmp_path / "run", *TRAIN_ARGS, "--max_steps", 30, "--lr", 1.5,
                        "--max_lr", 0, "--warmup_epochs", 0, "--log_frequency", 1)
    line = assert_one_line_error(result, "loss exploded to", "its running mean",
                                 "linear scaling: 1.5 x 2", "lower --max_lr", launcher=True)
    assert rank_of(line) == 0

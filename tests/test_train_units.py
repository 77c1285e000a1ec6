"""Pieces of the driver that need no second process: device pinning (GPUs faked), the
learning-rate arithmetic, histograms and the terminal progress bar."""
import os
import pty
import select
import subprocess
import sys

import pytest
import tensorflow as tf

from hvd_cifar import rank_setup, replica as replica_lib
from hvd_cifar.collectives import lost_peer_reason
from hvd_cifar import rank_input
from hvd_cifar.command import UserError
from helpers import ENV, REPO_ROOT, python_module, scalars, tensorflow_gpu_count


def lr_schedule(config, size, steps_per_epoch, end_step=None):
    """The schedule of a config chosen for size ranks, as train.py chooses it at its start."""
    return replica_lib.learning_rate_schedule(replica_lib.choose_optimizer(config, size), size,
                                              steps_per_epoch, end_step)


class FakeGPU:
    def __init__(self, index):
        self.name, self.device_type = f"/physical_device:GPU:{index}", "GPU"


@pytest.fixture
def fake_gpus(monkeypatch):
    """tf.config with four GPUs; records what pin_devices asks of it."""
    gpus = [FakeGPU(i) for i in range(4)]
    calls = {"visible": [], "growth": [], "threads": []}
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: gpus if kind == "GPU" else [])
    monkeypatch.setattr(tf.config, "set_visible_devices",
                        lambda device, kind=None: calls["visible"].append((device.name, kind)))
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth",
                        lambda device, on: calls["growth"].append((device.name, on)))
    monkeypatch.setattr(tf.config.threading, "set_intra_op_parallelism_threads",
                        lambda n: calls["threads"].append(n))
    return calls


@pytest.mark.parametrize("local_rank", [0, 3])
def test_each_rank_sees_only_the_gpu_of_its_local_rank_with_memory_growth(fake_gpus, local_rank):
    assert rank_setup.pin_devices(local_rank, 4) == f"GPU:{local_rank}"
    assert fake_gpus["visible"] == [(f"/physical_device:GPU:{local_rank}", "GPU")]
    assert fake_gpus["growth"] == [(f"/physical_device:GPU:{i}", True) for i in range(4)]
    assert fake_gpus["threads"] == []


def test_more_ranks_than_gpus_is_a_clear_error(fake_gpus):
    with pytest.raises(UserError, match="local rank 5 has no GPU: this host shows 4 GPUs but "
                       "runs 6 ranks"):
        rank_setup.pin_devices(5, 6)


YIELD = "OMPI_MCA_mpi_yield_when_idle"


def unset_for_this_test(monkeypatch, *names):
    """Remove names from the environment so that the test's own changes are undone after it
    (monkeypatch.delenv of an absent variable records nothing to restore)."""
    for name in names:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_cpu_ranks_make_open_mpi_yield_unless_told_otherwise(monkeypatch):
    if tensorflow_gpu_count():
        pytest.skip("TensorFlow sees a GPU here: ranks are GPU ranks")
    unset_for_this_test(monkeypatch, YIELD, "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS")
    rank_setup.set_launch_defaults()
    assert os.environ[YIELD] == "1"
    monkeypatch.setenv(YIELD, "0")  # the user's choice wins
    rank_setup.set_launch_defaults()
    assert os.environ[YIELD] == "0"


def test_gpu_ranks_keep_open_mpi_polling(fake_gpus, monkeypatch):
    unset_for_this_test(monkeypatch, YIELD, "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS")
    rank_setup.set_launch_defaults()
    assert YIELD not in os.environ
    assert os.environ["HOROVOD_STALL_SHUTDOWN_TIME_SECONDS"] == rank_setup.STALL_SHUTDOWN_SECONDS


@pytest.mark.parametrize("local_size, cores, threads", [(1, 2, 2), (2, 2, 1), (4, 16, 4),
                                                         (3, 2, 1)])
def test_cpu_ranks_on_one_host_split_its_cores(local_size, cores, threads):
    assert rank_setup.plan_devices([], 0, local_size, cores) == (None, threads)


def config(**overrides):
    return replica_lib.StepConfig(**{"max_lr": 0.0, **overrides})


@pytest.mark.parametrize("size", [1, 2, 8, 64])
def test_linear_sqrt_and_no_scaling(size):
    assert replica_lib.scaled_learning_rate(0.1, size, "linear", 0)[0] == pytest.approx(0.1 * size)
    assert replica_lib.scaled_learning_rate(0.1, size, "sqrt", 0)[0] == pytest.approx(
        0.1 * size ** .5)
    assert replica_lib.scaled_learning_rate(0.1, size, "none", 0)[0] == pytest.approx(0.1)


def test_warm_up_is_linear_from_lr_to_lr_times_size_then_flat():
    schedule, rule = lr_schedule(config(warmup_epochs=5.0), 2, 10)
    assert schedule.warmup_steps == 50 and rule == "linear scaling: 0.1 x 2"
    assert float(schedule(0)) == pytest.approx(0.1)
    assert float(schedule(25)) == pytest.approx(0.15)
    assert float(schedule(49)) == pytest.approx(0.1 + 0.1 * 49 / 50)
    assert float(schedule(50)) == pytest.approx(0.2)
    assert float(schedule(1000)) == pytest.approx(0.2)


def test_warm_up_defaults_to_5_epochs_with_several_ranks_and_none_alone():
    assert lr_schedule(config(), 2, 10)[0].warmup_steps == 50
    assert lr_schedule(config(), 1, 10)[0].warmup_steps == 0


@pytest.mark.parametrize("size", [1, 2, 8])
def test_the_decay_falls_at_epoch_350_whatever_the_number_of_ranks(size):
    steps_per_epoch = 50_000 // (128 * size)
    schedule, _ = lr_schedule(config(), size, steps_per_epoch)
    boundary = 350 * steps_per_epoch
    peak = 0.1 * size
    assert float(schedule(boundary - 1)) == pytest.approx(peak)
    assert float(schedule(boundary)) == pytest.approx(peak * 0.1)
    assert float(schedule(2 * boundary)) == pytest.approx(peak * 0.01)


def test_polynomial_decay_falls_squared_from_the_warm_up_end_to_0_at_max_steps():
    schedule, rule = lr_schedule(
        config(warmup_epochs=5.0, lr_decay="polynomial"), 2, 10, end_step=250)
    assert rule == "linear scaling: 0.1 x 2, polynomial decay to 0 at step 250"
    assert float(schedule(25)) == pytest.approx(0.15)  # warming up as before
    assert float(schedule(50)) == pytest.approx(0.2)
    assert float(schedule(150)) == pytest.approx(0.2 * 0.5 ** 2)
    assert float(schedule(200)) == pytest.approx(0.2 * 0.25 ** 2)
    assert float(schedule(250)) == 0.0 and float(schedule(300)) == 0.0


def test_polynomial_decay_needs_the_step_it_ends_at():
    with pytest.raises(ValueError, match="ends at"):
        lr_schedule(config(lr_decay="polynomial"), 2, 10)


def test_summary_histograms_writes_the_tutorials_activation_summaries(tmp_path):
    result = python_module("hvd_cifar.train", "--synthetic", "--train_dir", tmp_path,
                           "--max_steps", 2, "--log_frequency", 2, "--batch_size", 8,
                           "--summary_histograms")
    assert result.returncode == 0, result.stderr
    assert 0 <= scalars(str(tmp_path), "conv1/sparsity")[2] <= 1
    tags = set()
    for path in tmp_path.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)
    assert {"conv1/activations", "local4/activations", "local3/sparsity"} <= tags


def test_a_terminal_gets_a_progress_bar_and_the_log_file_gets_the_lines(tmp_path):
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "hvd_cifar.train", "--synthetic", "--train_dir", str(tmp_path),
         "--max_steps", "4", "--log_frequency", "2", "--batch_size", "8"],
        stdin=follower, stdout=follower, stderr=subprocess.PIPE, env=ENV, cwd=REPO_ROOT)
    os.close(follower)
    screen = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 120)
        try:
            chunk = os.read(leader, 4096) if ready else b""
        except OSError:  # the child closed the terminal
            chunk = b""
        if not chunk:
            break
        screen += chunk
    assert process.wait(timeout=120) == 0, process.stderr.read()
    text = screen.decode(errors="replace")
    assert "4/4 [" in text and "loss:" in text
    assert ", loss = " not in text
    log = (tmp_path / "train.log").read_text()
    assert "step 2, loss = " in log and "step 4, loss = " in log


def test_backward_passes_count_as_workers_for_the_rate_and_the_warm_up():
    schedule, rule = lr_schedule(
        config(backward_passes_per_step=4, optimizer="sgd"), 2, 10)
    assert rule == "linear scaling: 0.1 x 8" and schedule.peak_lr == pytest.approx(0.8)
    assert schedule.warmup_steps == 50
    alone, _ = lr_schedule(config(backward_passes_per_step=2), 1, 10)
    assert alone.peak_lr == pytest.approx(0.2) and alone.warmup_steps == 50


@pytest.mark.parametrize("size, rate", [(1, 0.1), (2, 0.2), (8, 0.3), (64, 0.3)])
def test_the_default_policy_is_linear_scaling_capped_at_0_3(size, rate):
    schedule, rule = lr_schedule(replica_lib.StepConfig(), size, 100,
                                                        end_step=10_000)
    assert schedule.peak_lr == pytest.approx(rate)
    assert rule.startswith(f"linear scaling: 0.1 x {size}")
    assert ("capped by --max_lr 0.3" in rule) == (size > 3)


@pytest.mark.parametrize("ranks, passes", [(1, 1), (2, 1), (4, 1), (2, 2), (7, 1)])
def test_below_8_workers_the_default_is_the_tutorials_sgd_with_a_5_epoch_warm_up(ranks, passes):
    config = replica_lib.choose_optimizer(replica_lib.StepConfig(backward_passes_per_step=passes),
                                          ranks)
    assert (config.optimizer, config.momentum, config.lr_decay) == ("sgd", 0.0, "staircase")
    assert config.trust_coefficient is None
    schedule, rule = lr_schedule(config, ranks, 10)
    assert schedule.warmup_steps == (50 if ranks * passes > 1 else 0)
    assert float(schedule(0)) == pytest.approx(0.1)  # from one worker's rate
    assert "polynomial" not in rule


@pytest.mark.parametrize("ranks, passes", [(8, 1), (2, 4), (16, 1), (32, 1), (2, 16), (64, 1)])
def test_from_8_workers_the_default_is_lars_with_the_measured_recipe(ranks, passes):
    workers = ranks * passes
    config = replica_lib.choose_optimizer(replica_lib.StepConfig(backward_passes_per_step=passes),
                                          ranks)
    assert (config.optimizer, config.momentum, config.lars_output_layer, config.lr_decay) == (
        "lars", 0.9, "global", "staircase")
    assert config.trust_coefficient == pytest.approx(0.00125 * workers)
    steps_an_epoch = 12
    schedule, rule = lr_schedule(config, ranks, steps_an_epoch)
    # 2 epochs of warm-up from the capped peak's share of one worker, then the peak held until
    # the tutorial's first step down at 350 epochs.
    assert schedule.warmup_steps == 24 and schedule.peak_lr == pytest.approx(0.3)
    assert float(schedule(0)) == pytest.approx(0.3 / workers)
    assert float(schedule(24)) == pytest.approx(0.3)
    assert float(schedule(350 * steps_an_epoch - 1)) == pytest.approx(0.3)
    assert float(schedule(350 * steps_an_epoch)) == pytest.approx(0.03)
    assert rule == (f"linear scaling: 0.1 x {workers} = {0.1 * workers:.4g}, capped by "
                    "--max_lr 0.3")
    assert replica_lib.optimizer_rule(config) == (
        f"LARS, trust coefficient {0.00125 * workers:g}, momentum 0.9, the output layer's "
        "matrix at the global rate")


def test_flags_given_are_kept_whatever_the_number_of_workers():
    sgd = replica_lib.choose_optimizer(replica_lib.StepConfig(optimizer="sgd"), 32)
    assert (sgd.optimizer, sgd.momentum, sgd.lr_decay) == ("sgd", 0.0, "staircase")
    lars = replica_lib.choose_optimizer(replica_lib.StepConfig(
        optimizer="lars", momentum=0.5, trust_coefficient=0.001, lars_output_layer="trust",
        lr_decay="staircase"), 2)
    assert (lars.optimizer, lars.momentum, lars.trust_coefficient, lars.lars_output_layer,
            lars.lr_decay) == ("lars", 0.5, 0.001, "trust", "staircase")
    assert replica_lib.optimizer_rule(lars) == ("LARS, trust coefficient 0.001, momentum 0.5, "
                                                "the output layer's matrix by its trust ratio")
    # A chosen config is chosen again unchanged, whatever the ranks (an elastic resize).
    assert replica_lib.choose_optimizer(lars, 64) == lars


def test_an_elastic_job_takes_sgd_unless_told_and_lars_there_needs_its_trust_coefficient():
    chosen = replica_lib.choose_optimizer(replica_lib.StepConfig(), 32, elastic=True)
    assert chosen.optimizer == "sgd"
    with pytest.raises(UserError, match="--elastic with --optimizer lars needs "
                                        "--trust_coefficient"):
        replica_lib.choose_optimizer(replica_lib.StepConfig(optimizer="lars"), 2, elastic=True)
    told = replica_lib.choose_optimizer(
        replica_lib.StepConfig(optimizer="lars", trust_coefficient=0.01), 2, elastic=True)
    assert told.trust_coefficient == 0.01


@pytest.mark.parametrize("scaling, size, rate", [("sqrt", 64, 0.3), ("sqrt", 4, 0.2),
                                                  ("none", 64, 0.1)])
def test_the_cap_applies_to_every_rule(scaling, size, rate):
    peak, _ = replica_lib.scaled_learning_rate(0.1, size, scaling, 0.3)
    assert peak == pytest.approx(rate)


class FakeReplica:
    warmup_steps, lr_rule = 100, "linear scaling: 0.1 x 8 = 0.8"

    def learning_rate(self):
        return 0.8


def test_the_loss_guard_ignores_warm_up_and_stops_an_explosion_after_it():
    replica_lib.check_loss(50.0, 2.0, step=100, replica=FakeReplica())    # still warming up
    replica_lib.check_loss(7.9, 2.0, step=101, replica=FakeReplica())     # under 4x
    with pytest.raises(UserError, match=r"loss exploded to 8.1 at step 101, 4.0x its running "
                       r"mean 2 \(learning rate 0.8, linear scaling: 0.1 x 8 = 0.8\); lower "
                       "--max_lr or use --lr_scaling sqrt"):
        replica_lib.check_loss(8.1, 2.0, step=101, replica=FakeReplica())
    with pytest.raises(UserError, match="loss is nan at step 5: training diverged"):
        replica_lib.check_loss(float("nan"), None, step=5, replica=FakeReplica())


@pytest.mark.parametrize("shutdown, check, refused", [("30", None, True), ("59", "60", True),
                                                      ("300", None, False), ("20", "10", False),
                                                      ("0", None, False)])
def test_a_stall_shutdown_below_horovods_warning_time_is_refused(shutdown, check, refused):
    environment = {"HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": shutdown}
    if check is not None:
        environment["HOROVOD_STALL_CHECK_TIME_SECONDS"] = check
    if refused:
        with pytest.raises(UserError, match=f"HOROVOD_STALL_SHUTDOWN_TIME_SECONDS={shutdown} is "
                           "below HOROVOD_STALL_CHECK_TIME_SECONDS"):
            rank_setup.check_stall_times(environment)
    else:
        rank_setup.check_stall_times(environment)


# Messages as Horovod 0.28 and its Gloo put them in a collective's error (their library's
# strings), and look-alikes that are not a lost peer.
HOROVOD_SHUT_DOWN = ("Horovod has been shut down. This was caused by an exception on one of the "
                     "ranks or an attempt to allreduce, allgather or broadcast a tensor after one "
                     "of the ranks finished execution.\n\t [[{{node HorovodAllreduce_grads_0}}]]")
GLOO_CLOSED = ("[/tmp/pip-wheel-x/horovod/third_party/compatible17_gloo/gloo/transport/tcp/"
               "pair.cc:598] Connection closed by peer [10.200.0.3]:40123 [[{{node x}}]]")
GLOO_TIMED_OUT = ("Gloo all-reduce failed: [/tmp/h/third_party/gloo/gloo/transport/tcp/"
                  "unbound_buffer.cc:81] Timed out waiting 20000ms for recv operation to complete")


@pytest.mark.parametrize("message, reason", [
    (HOROVOD_SHUT_DOWN, "Horovod has been shut down"),
    (GLOO_CLOSED, "Connection closed by peer [10.200.0.3]:40123"),
    (GLOO_TIMED_OUT, "Timed out waiting 20000ms for recv operation to complete"),
])
def test_a_lost_peer_is_told_by_horovod_s_and_gloo_s_own_words(message, reason):
    assert lost_peer_reason(tf.errors.UnknownError(None, None, message)) == reason


@pytest.mark.parametrize("message", [
    "Connection reset by peer while reading gs://bucket/data_batch_1.bin",  # tf.data's input
    "HorovodAllreduce_grads_0: Input to reshape is a tensor with 12 values",  # inside an op
    "Gloo context could not be created: connection refused",  # start-up, not a lost peer
])
def test_other_failures_are_not_called_a_lost_peer(message):
    assert lost_peer_reason(tf.errors.UnknownError(None, None, message)) is None


def test_a_config_not_chosen_for_the_job_cannot_reach_the_step():
    unchosen = replica_lib.StepConfig(backward_passes_per_step=4)
    with pytest.raises(ValueError, match="pass the config through choose_optimizer first"):
        replica_lib.learning_rate_schedule(unchosen, 2, 10)
    with pytest.raises(ValueError, match="pass the config through choose_optimizer first"):
        replica_lib.Replica(unchosen, 2, 10)
    chosen = replica_lib.choose_optimizer(unchosen, 2)
    assert chosen.chosen_for_workers == 8 and chosen.optimizer == "lars"
    assert replica_lib.choose_optimizer(chosen, 4) is chosen


def test_the_logged_loss_and_accuracy_average_every_backward_pass_of_a_step():
    config = replica_lib.choose_optimizer(replica_lib.StepConfig(backward_passes_per_step=3), 1)
    replica = replica_lib.Replica(config, 1, 10)
    passes = []
    replica.train_pass = lambda inputs, first, last: (
        passes.append((first, last)) or (tf.constant(inputs), tf.constant(inputs / 10)))
    loss, accuracy = replica.step(iter([1.0, 2.0, 6.0, 100.0]))
    assert (float(loss), float(accuracy)) == pytest.approx((3.0, 0.3))
    assert passes == [(True, False), (False, False), (False, True)]


def test_timed_batches_keep_the_last_batch_and_the_time_waited_for_it(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(rank_input.time, "perf_counter", lambda: clock[0])

    def batches_that_take_2_seconds_each():
        for batch in ("a", "b"):
            clock[0] += 2.0
            yield batch
    batches = rank_input.TimedBatches(batches_that_take_2_seconds_each())
    assert [next(batches), next(batches)] == ["a", "b"] and batches.last == "b"
    assert batches.take_wait() == 4.0 and batches.take_wait() == 0.0
    assert batches.shard is None


def test_epochs_per_decay_places_the_staircase_and_the_rule_says_where():
    # 6 steps an epoch, x0.1 every 66.7 epochs: at step 400 (int(400.2)), again at 800.
    config = replica_lib.StepConfig(backward_passes_per_step=32, optimizer="lars",
                                    max_lr=0.3, warmup_epochs=2, epochs_per_decay=66.7)
    schedule, rule = lr_schedule(config, 2, 6)
    assert rule == "linear scaling: 0.1 x 64 = 6.4, capped by --max_lr 0.3, x0.1 every 400 steps"
    rates = [float(schedule(step)) for step in (399, 400, 799, 800)]
    assert rates == pytest.approx([0.3, 0.03, 0.03, 0.003])
    # The tutorial's 350 epochs: the rule does not mention it, the first decay at 2100 steps.
    schedule, rule = lr_schedule(replica_lib.StepConfig(backward_passes_per_step=32,
                                                        optimizer="lars", max_lr=0.3), 2, 6)
    assert rule == "linear scaling: 0.1 x 64 = 6.4, capped by --max_lr 0.3"
    assert schedule.decay_steps == 2100

"""The policy at a batch a worker other than 128: which flags give a global batch the setting
measured for it, the trainer's note when a run's settings are not those, and the planner's
command."""
import pytest

from helpers import python_module
from hvd_cifar import plan, policy, replica as replica_lib


@pytest.mark.parametrize("batch, workers, flags", [
    # 64 GPUs of 32 = 2048 = 16 batches of 128: the 16-worker setting, the rate 0.1 x 16
    # capped at 0.3 reached as 0.025 x 64.
    (32, 64, "--batch_size 32 --lr 0.025 --optimizer lars --trust_coefficient 0.02 "
             "--warmup_epochs 2"),
    # 1 GPU of 512 = 4 batches of 128: SGD at 0.1 x 4 (capped by --max_lr) with a warm-up.
    (512, 1, "--batch_size 512 --lr 0.4 --optimizer sgd --warmup_epochs 5"),
    # 2 GPUs of 32 = 64, below one batch of 128: the tutorial's 0.1 (0.05 x 2), no warm-up.
    (32, 2, "--batch_size 32 --lr 0.05 --optimizer sgd --warmup_epochs 0"),
])
def test_the_flags_of_a_global_batch_by_hand(batch, workers, flags):
    assert policy.flags_text(policy.settings_for_global_batch(batch, workers)) == flags


@pytest.mark.parametrize("batch, ranks", [(32, 64), (64, 32), (32, 32), (256, 8), (512, 2)])
def test_the_flags_give_the_setting_of_128_a_worker_at_the_same_global_batch(batch, ranks):
    # What the trainer makes of the flags at `ranks` workers of `batch` equals its defaults at
    # the same global batch made of 128 a worker.
    settings = policy.settings_for_global_batch(batch, ranks)
    given = replica_lib.choose_optimizer(replica_lib.StepConfig(**settings), ranks)
    reference_ranks = batch * ranks // policy.TUTORIAL_BATCH
    reference = replica_lib.choose_optimizer(replica_lib.StepConfig(), reference_ranks)
    steps_per_epoch = 50_000 // (batch * ranks)
    schedule, _ = replica_lib.learning_rate_schedule(given, ranks, steps_per_epoch)
    expected, _ = replica_lib.learning_rate_schedule(reference, reference_ranks, steps_per_epoch)
    assert schedule.peak_lr == pytest.approx(expected.peak_lr)
    assert schedule.warmup_steps == expected.warmup_steps
    assert (given.optimizer, given.trust_coefficient, given.momentum) == pytest.approx(
        (reference.optimizer, reference.trust_coefficient, reference.momentum))
    assert policy.settings_differing(given, ranks) == ""


def test_the_defaults_at_32_a_worker_differ_from_the_measured_setting():
    chosen = replica_lib.choose_optimizer(replica_lib.StepConfig(batch_size=32), 64)
    assert chosen.trust_coefficient == pytest.approx(0.08)  # the 64-worker default
    assert policy.settings_differing(chosen, 64) == (
        "--batch_size 32 --lr 0.025 --optimizer lars --trust_coefficient 0.02 --warmup_epochs 2")
    # At 128 a worker the defaults are the policy; below a global batch of 128 nothing was
    # measured.
    assert policy.settings_differing(replica_lib.choose_optimizer(
        replica_lib.StepConfig(), 64), 64) == ""
    assert policy.settings_differing(replica_lib.choose_optimizer(
        replica_lib.StepConfig(batch_size=16), 2), 2) == ""


def test_the_planner_says_the_command_with_the_measured_setting():
    inputs = plan.load_inputs()
    assert plan.train_command(32, 32, inputs) == (
        "horovodrun -np 32 -hostfile hosts python -m hvd_cifar.train --batch_size 32 --lr 0.025 "
        "--optimizer lars --trust_coefficient 0.01 --warmup_epochs 2")
    assert plan.train_command(8, 128, inputs).startswith("horovodrun -np 8 python -m "
                                                          "hvd_cifar.train (at 128 a GPU")


def test_the_trainer_says_the_measured_setting_when_its_own_differs(tmp_path):
    # One rank of 64 x 4 passes = 256, two batches of 128: the defaults give 0.1 x 4 capped at
    # 0.3; the policy gives 0.1 x 2.
    def train(train_dir, *flags):
        result = python_module("hvd_cifar.train", "--synthetic", "--batch_size", 64,
                               "--backward_passes_per_step", 4, "--train_dir", train_dir,
                               "--max_steps", 1, *flags)
        assert result.returncode == 0, result.stderr
        return result.stdout

    note = ("hvd_cifar: note: the defaults follow the 4 workers, as measured at 128 a worker; "
            "the setting measured for global batch 256 is --batch_size 64 --lr 0.05 "
            "--optimizer sgd --warmup_epochs 5\n")
    assert note in train(tmp_path / "defaults")
    followed = train(tmp_path / "followed", "--lr", 0.05, "--optimizer", "sgd",
                     "--warmup_epochs", 5)
    assert "note: the defaults follow" not in followed
    assert "learning rate 0.2 (linear scaling: 0.05 x 4)" in followed

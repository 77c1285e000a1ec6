"""The training policy's numbers: the tutorial's schedule, and how the optimizer and its rate
follow the global batch (docs/results/lr_policy.md). Free of TensorFlow and Horovod, so the
planner can say which flags give a run the setting that was measured."""
import math

# The tutorial's cifar10.py constants describing the training process.
TUTORIAL_BATCH = 128               # One worker's batch, as the policy was measured with.
INITIAL_LEARNING_RATE = 0.1        # Initial learning rate (per worker, before scaling).
NUM_EPOCHS_PER_DECAY = 350.0       # Epochs after which the learning rate decays.
LEARNING_RATE_DECAY_FACTOR = 0.1   # Learning rate decay factor.
MOVING_AVERAGE_DECAY = 0.9999      # The decay to use for the moving average.

DEFAULT_WARMUP_EPOCHS = 5.0   # Goyal et al. 2017: linear warm-up over the first 5 epochs.
# The largest scaled rate that trains this network stably at a global batch of 1024; larger
# caps, and the linear rule's rate at 8 workers, make the loss jump or diverge
# (docs/results/lr_policy.md).
DEFAULT_MAX_LR = 0.3
# The large-batch policy (docs/results/lr_policy.md): from this many workers on (W = ranks x
# backward passes), LARS by default: at 8 and 32 workers SGD's capped rate makes too few updates
# to keep up with batch 128, while LARS's matrices each step by their own share.
LARS_FROM_WORKERS = 8
# LARS's defaults: each weight matrix moves by rate x trust = 0.3 x 0.00125 x W of its norm an
# update, the paper's 0.3% share at 8 workers, with momentum and a shorter warm-up.
LARS_TRUST_PER_WORKER = 0.00125
LARS_MOMENTUM = 0.9
LARS_WARMUP_EPOCHS = 2.0


def default_warmup_epochs(lars, workers):
    """The warm-up when none is given: only when the rate was scaled."""
    if workers <= 1:
        return 0.0
    return LARS_WARMUP_EPOCHS if lars else DEFAULT_WARMUP_EPOCHS


def settings_for_global_batch(batch_per_worker, workers):
    """The settings the policy gives the global batch of `workers` workers of
    `batch_per_worker` examples, as trainer flags (name: value). The defaults follow W, the
    number of workers, as they were measured with the tutorial's 128 a worker; at another batch
    a worker the same W makes another global batch, so these are the defaults of W' = global
    batch / 128 workers, with --lr set so that the trainer's scaling by W gives 0.1 x W' (and
    the tutorial's 0.1 below a global batch of 128)."""
    batches_of_128 = batch_per_worker * workers / TUTORIAL_BATCH
    lars = batches_of_128 >= LARS_FROM_WORKERS
    # Below one batch of 128 the tutorial's own rate, unscaled.
    lr = INITIAL_LEARNING_RATE * max(batches_of_128, 1.0) / workers
    settings = {"batch_size": batch_per_worker, "lr": lr, "optimizer": "lars" if lars else "sgd"}
    if lars:
        settings["trust_coefficient"] = LARS_TRUST_PER_WORKER * batches_of_128
    settings["warmup_epochs"] = default_warmup_epochs(lars, batches_of_128)
    return settings


def settings_differing(config, workers):
    """The flags of the policy's settings for a chosen config's global batch (batch a worker,
    rate, optimizer, trust coefficient, warm-up) when the config's differ from them, else "";
    always "" at the tutorial's 128 a worker, where the defaults are the policy, and below a
    global batch of 128, where nothing was measured."""
    if config.batch_size == TUTORIAL_BATCH or config.batch_size * workers < TUTORIAL_BATCH:
        return ""
    measured = settings_for_global_batch(config.batch_size, workers)
    warmup = config.warmup_epochs
    if warmup is None:
        warmup = default_warmup_epochs(config.optimizer == "lars", workers)
    given = {"batch_size": config.batch_size, "lr": config.lr, "optimizer": config.optimizer,
             "trust_coefficient": config.trust_coefficient, "warmup_epochs": warmup}
    def same(name, value):
        if isinstance(value, float) and given[name] is not None:
            return math.isclose(given[name], value, rel_tol=1e-9, abs_tol=1e-12)
        return given[name] == value

    if all(same(name, value) for name, value in measured.items()):
        return ""
    return flags_text(measured)


def flags_text(settings):
    """'--name value ...' of settings_for_global_batch's settings."""
    return " ".join(f"--{name} {value:g}" if isinstance(value, float) else f"--{name} {value}"
                    for name, value in settings.items())

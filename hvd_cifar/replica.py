"""A rank's replica of the training state and its step: the tutorial network, its Horovod
optimizer, the moving averages, the step counter, the compiled backward pass, and the learning
rate it follows (cifar10.py's train(), data-parallel). Built identically on every rank; train.py's
Trainer drives it, bench.py times it.
"""
import dataclasses
import hashlib
import math

import tensorflow as tf
import horovod.tensorflow as hvd

from hvd_cifar import checkpoint as checkpoint_lib, model as model_lib
from hvd_cifar.command import (AllreduceFlags, DeviceFlags, UserError, batch_size_int, flag,
                               non_negative_float, positive_float, positive_int, setting)
from hvd_cifar.data import pipeline
from hvd_cifar.policy import (DEFAULT_MAX_LR, DEFAULT_WARMUP_EPOCHS, INITIAL_LEARNING_RATE,
                              LARS_FROM_WORKERS, LARS_MOMENTUM, LARS_TRUST_PER_WORKER,
                              LARS_WARMUP_EPOCHS, LEARNING_RATE_DECAY_FACTOR, MOVING_AVERAGE_DECAY,
                              NUM_EPOCHS_PER_DECAY, TUTORIAL_BATCH, default_warmup_epochs)
from hvd_cifar.rank_setup import xla_compiles

# Stop when a logged loss exceeds this multiple of its running mean after warm-up.
LOSS_EXPLOSION_FACTOR = 4.0


@dataclasses.dataclass
class StepConfig(DeviceFlags, AllreduceFlags, pipeline.AugmentFlags):
    """The flags of the training step and its learning rate (train.py adds the loop's)."""
    batch_size: int = flag(TUTORIAL_BATCH, "examples a rank processes in one backward pass; "
                           "the global batch is batch_size x ranks x backward_passes_per_step",
                           batch_size_int)
    lr: float = flag(INITIAL_LEARNING_RATE, "initial learning rate of one worker, before "
                     "scaling by ranks x backward_passes_per_step", positive_float)
    lr_scaling: str = flag("linear", "how the rate grows with W = ranks x "
                           "backward_passes_per_step: lr x W, lr x sqrt(W), or lr",
                           choices=("linear", "sqrt", "none"))
    max_lr: float = flag(DEFAULT_MAX_LR, "cap on the scaled learning rate (this network "
                         "diverges with 0.8 at 8 workers); 0 means no cap", non_negative_float)
    warmup_epochs: float = flag(None, "epochs of linear warm-up to the scaled rate, from lr "
                                "(SGD) or from the scaled rate / W (LARS) (default: "
                                f"{DEFAULT_WARMUP_EPOCHS:g} under SGD and "
                                f"{LARS_WARMUP_EPOCHS:g} under LARS when W > 1, else 0)",
                                non_negative_float)
    # The staircase under LARS too: a decay to 0 at --max_steps ended lower (lr_policy.md).
    lr_decay: str = flag("staircase", "after warm-up: the tutorial's staircase (x0.1 every "
                         "--epochs_per_decay epochs), or polynomial: the rate falls as "
                         "(1 - progress)^2 to 0 at --max_steps (You et al. 2017)",
                         choices=("staircase", "polynomial"))
    epochs_per_decay: float = flag(NUM_EPOCHS_PER_DECAY, "epochs between the staircase's x0.1 "
                                   "decays, counted from the start (the tutorial's "
                                   f"{NUM_EPOCHS_PER_DECAY:g})", positive_float)
    momentum: float = flag(None, "momentum (default: 0 under SGD, as the tutorial; "
                           f"{LARS_MOMENTUM:g} under LARS)", non_negative_float)
    optimizer: str = flag(None, "sgd: the tutorial's SGD; lars: SGD whose step of each weight "
                          "matrix is scaled by --trust_coefficient x |w| / |g| after the "
                          "all-reduce (layer-wise adaptive rates, You et al. 2017; biases keep "
                          "the global rate) (default: sgd below W = "
                          f"{LARS_FROM_WORKERS}, lars from there on; sgd with --elastic)",
                          choices=("sgd", "lars"))
    trust_coefficient: float = flag(None, "LARS's trust coefficient: a weight matrix's step "
                                    "is this share of its norm, times the learning rate "
                                    f"(default: {LARS_TRUST_PER_WORKER:g} x W)",
                                    positive_float)
    lars_output_layer: str = flag(None, "under LARS, the output layer's weight matrix "
                                  "(softmax_linear) steps by its trust ratio like the others "
                                  "(trust, the paper), or at the global rate like the biases "
                                  "(global, the default)", choices=("trust", "global"))
    use_fp16: bool = flag(False, "compute in float16 with float32 variables (mixed_float16, "
                          "GPUs) and dynamic loss scaling")
    backward_passes_per_step: int = flag(1, "backward passes whose gradients are summed "
                                         "locally before one all-reduce and update",
                                         positive_int)
    chosen_for_workers: int = setting("the workers (ranks x backward passes) whose optimizer "
                                      "settings choose_optimizer filled in")


def choose_optimizer(config, ranks, elastic=False):
    """config with the optimizer and the settings left to their defaults chosen for a job of
    `ranks` ranks: a global batch of W = ranks x backward passes worker batches. An elastic
    job's W changes as it runs, so it takes SGD unless told, and LARS's trust coefficient must
    then be given."""
    # Horovod: one update averages the gradients of W worker batches.
    workers = ranks * config.backward_passes_per_step
    if config.chosen_for_workers is not None:
        return config  # chosen once, at the job's start: an elastic resize keeps them
    if config.optimizer is None:
        optimizer = "lars" if workers >= LARS_FROM_WORKERS and not elastic else "sgd"
    else:
        optimizer = config.optimizer
    lars = optimizer == "lars"
    if lars and elastic and config.trust_coefficient is None:
        raise UserError("--elastic with --optimizer lars needs --trust_coefficient: its "
                        "default follows the number of workers, which an elastic job changes")
    trust = config.trust_coefficient
    if trust is None and lars:  # SGD has none
        trust = LARS_TRUST_PER_WORKER * workers
    momentum = config.momentum
    if momentum is None:
        momentum = LARS_MOMENTUM if lars else 0.0
    return dataclasses.replace(
        config, optimizer=optimizer, momentum=momentum, trust_coefficient=trust,
        lars_output_layer=config.lars_output_layer or "global", chosen_for_workers=workers)


def require_chosen(config):
    """The step's settings must have been chosen for the job (choose_optimizer, once, at the
    command's edge): a config that was not would silently get one worker's."""
    if config.chosen_for_workers is None:
        raise ValueError("the optimizer settings were not chosen for the job's workers: "
                         "pass the config through choose_optimizer first")


def optimizer_rule(config):
    """The optimizer of a chosen config, in words."""
    if config.optimizer == "sgd":
        return f"SGD, momentum {config.momentum:g}"
    output = ("at the global rate" if config.lars_output_layer == "global"
              else "by its trust ratio")
    return (f"LARS, trust coefficient {config.trust_coefficient:g}, momentum "
            f"{config.momentum:g}, the output layer's matrix {output}")


def optimizer_record(config):
    """The optimizer's settings a resume compares (run.json); LARS's own are None under SGD,
    where they play no part."""
    lars = config.optimizer == "lars"
    return {"optimizer": config.optimizer, "momentum": config.momentum,
            "trust_coefficient": config.trust_coefficient if lars else None,
            "lars_output_layer": config.lars_output_layer if lars else None,
            "warmup_epochs": config.warmup_epochs, "lr_decay": config.lr_decay,
            "epochs_per_decay": config.epochs_per_decay}


# ---------------------------------------------------------------------------------------------
# Learning rate

def scaled_learning_rate(lr, workers, lr_scaling, max_lr):
    """(peak rate, a sentence saying how it was reached) for a global batch of `workers` times
    one worker's batch."""
    factor = {"linear": workers, "sqrt": math.sqrt(workers), "none": 1}[lr_scaling]
    rate = lr * factor
    rule = f"{lr_scaling} scaling: {lr:g} x {factor:.4g}"
    if max_lr and rate > max_lr:
        if not math.isclose(rate, max_lr):  # 0.1 x 3 only meets the cap of 0.3
            rule += f" = {rate:.4g}, capped by --max_lr {max_lr:g}"
        rate = max_lr
    return rate, rule


POLYNOMIAL_DECAY_POWER = 2.0


class LearningRateSchedule:
    """Linear warm-up from base_lr to peak_lr, then either the tutorial's staircase decay (x0.1
    every decay_steps) or, given end_step, a polynomial decay to 0 at end_step. Steps are
    synchronized updates; boundaries are given in steps computed from epochs, so they fall at the
    same data position whatever the number of ranks."""

    def __init__(self, base_lr, peak_lr, warmup_steps, decay_steps,
                 decay_factor=LEARNING_RATE_DECAY_FACTOR, end_step=None):
        self.base_lr, self.peak_lr = base_lr, peak_lr
        self.warmup_steps, self.decay_steps = warmup_steps, decay_steps
        self.decay_factor = decay_factor
        self.end_step = end_step

    def __call__(self, step):
        """The rate of the update made at step (a number or a tensor)."""
        step = tf.cast(step, tf.float32)
        if self.end_step is None:
            decayed = self.peak_lr * tf.pow(self.decay_factor,
                                            tf.floor(step / self.decay_steps))
        else:
            decay_length = float(max(self.end_step - self.warmup_steps, 1))
            remaining = tf.clip_by_value(1.0 - (step - self.warmup_steps) / decay_length,
                                         0.0, 1.0)
            decayed = self.peak_lr * tf.pow(remaining, POLYNOMIAL_DECAY_POWER)
        if not self.warmup_steps:
            return decayed
        warming = self.base_lr + (self.peak_lr - self.base_lr) * step / self.warmup_steps
        return tf.where(step < self.warmup_steps, warming, decayed)


def learning_rate_schedule(config, size, steps_per_epoch, end_step=None):
    """(LearningRateSchedule, rule sentence) for size ranks taking steps_per_epoch steps an
    epoch; a polynomial decay ends at end_step (the run's --max_steps)."""
    # Horovod: one update averages the gradients of size ranks x backward passes, a global
    # batch that many times one worker's, so the rate grows with it (Goyal et al. 2017).
    workers = size * config.backward_passes_per_step
    require_chosen(config)
    lars = config.optimizer == "lars"
    peak_lr, rule = scaled_learning_rate(config.lr, workers, config.lr_scaling, config.max_lr)
    warmup_epochs = config.warmup_epochs
    if warmup_epochs is None:
        # Horovod: warm up only when the rate was scaled.
        warmup_epochs = default_warmup_epochs(lars, workers)
    # SGD warms up from one worker's rate; LARS from the peak's share of one worker, as the
    # layer-wise steps start small whatever the cap.
    warmup_start = peak_lr / workers if lars else min(config.lr, peak_lr)
    polynomial = config.lr_decay == "polynomial"
    if polynomial:
        if end_step is None:
            raise ValueError("a polynomial decay needs the step it ends at")
        rule += f", polynomial decay to 0 at step {end_step}"
    decay_steps = int(config.epochs_per_decay * steps_per_epoch)
    if not polynomial and config.epochs_per_decay != NUM_EPOCHS_PER_DECAY:
        rule += f", x{LEARNING_RATE_DECAY_FACTOR:g} every {decay_steps} steps"
    schedule = LearningRateSchedule(warmup_start, peak_lr,
                                    int(round(warmup_epochs * steps_per_epoch)),
                                    max(decay_steps, 1),
                                    end_step=end_step if polynomial else None)
    return schedule, rule


# ---------------------------------------------------------------------------------------------
# The training state and step

class Replica:
    """One rank's model, its Horovod optimizer, the moving averages and the step counter, plus
    the compiled training step. Its learning rate is set by rescale, for size ranks taking
    steps_per_epoch steps an epoch."""

    def __init__(self, config, size=None, steps_per_epoch=None):
        require_chosen(config)
        self.config = config
        self.model = model_lib.inference(config.use_fp16)
        self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        # The rate is set from the schedule before every step.
        if config.optimizer == "lars":
            global_rate_layers = (model_lib.OUTPUT_LAYER,) if (
                config.lars_output_layer == "global") else ()
            optimizer = LARS(config.trust_coefficient, global_rate_layers,
                             learning_rate=config.lr, momentum=config.momentum)
        else:
            optimizer = tf.keras.optimizers.SGD(learning_rate=config.lr, momentum=config.momentum)
        # Horovod: average gradients by ring all-reduce before every update (optionally in
        # float16 on the wire, optionally after several local backward passes).
        optimizer = hvd.DistributedOptimizer(
            optimizer,
            compression=hvd.Compression.fp16 if config.fp16_allreduce else hvd.Compression.none,
            backward_passes_per_step=config.backward_passes_per_step,
            average_aggregated_gradients=True)
        if config.use_fp16:
            # The loss is scaled before and unscaled after the Horovod all-reduce.
            optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
        self.optimizer, self.optimizer_rule = optimizer, optimizer_rule(config)
        self.optimizer.build(self.model.trainable_variables)
        # The tutorial's ExponentialMovingAverage(0.9999, global_step): the decay is
        # min(0.9999, (1 + step) / (10 + step)), so the averages follow early training closely.
        self.moving_averages = tf.train.ExponentialMovingAverage(MOVING_AVERAGE_DECAY,
                                                                 num_updates=self.global_step)
        self.moving_averages.apply(self.model.trainable_variables)
        self.averaged_variables = [self.moving_averages.average(v)
                                   for v in self.model.trainable_variables]
        self.checkpoint = checkpoint_lib.layout(self.model, self.averaged_variables,
                                                self.global_step, optimizer=self.optimizer)
        jit_compile = xla_compiles(config.xla)
        # Horovod: XLA compiles the forward pass and loss (and so their gradient), never the
        # all-reduce: Horovod registers XLA kernels for GPU builds only, and on CPU a compiled
        # HorovodAllreduce fails ("No registered 'HorovodAllreduce' OpKernel for XLA_CPU_JIT").
        self.loss_and_logits = tf.function(self._loss_and_logits, jit_compile=jit_compile)
        self.size = self.steps_per_epoch = self.device_shard = None
        if size is not None:
            self.rescale(size, steps_per_epoch)

    def rescale(self, size, steps_per_epoch, end_step=None):
        """Set the learning-rate schedule for size ranks (again when an elastic job resizes)."""
        if (size, steps_per_epoch) == (self.size, self.steps_per_epoch):
            return
        self.size, self.steps_per_epoch = size, steps_per_epoch
        self.schedule, self.lr_rule = learning_rate_schedule(self.config, size, steps_per_epoch,
                                                             end_step)
        self.warmup_steps = self.schedule.warmup_steps
        # Traced anew: the schedule's numbers are constants of the compiled pass.
        self.train_pass = tf.function(self._train_pass)

    def feed_from(self, batches):
        """Train from batches: an iterator of (images, labels) built on the host, or of step
        numbers whose batches the device path's shard builds inside the compiled pass."""
        self.device_shard = getattr(batches, "shard", None)
        # Traced anew: the shard is a constant of the compiled pass.
        self.train_pass = tf.function(self._train_pass)

    def state_variables(self):
        return (self.model.variables + list(self.optimizer.variables) +
                self.averaged_variables + [self.global_step])

    def learning_rate(self):
        return float(self.schedule(self.global_step))

    def _loss_and_logits(self, images, labels):
        logits = self.model(images, training=True)
        return model_lib.loss(self.model, logits, labels), logits

    def batch_of(self, inputs):
        """(images, labels) of one pass's inputs."""
        return inputs if self.device_shard is None else self.device_shard.batch_of_step(inputs)

    def _train_pass(self, inputs, first, last):
        """One backward pass, compiled as one call (the per-call cost is paid once a pass): the
        first of a step sets its rate, the last advances the step and the averages."""
        images, labels = self.batch_of(inputs)
        if first:
            self.optimizer.learning_rate.assign(self.schedule(self.global_step))
        with tf.GradientTape() as tape:
            loss, logits = self.loss_and_logits(images, labels)
        # Horovod: minimize() all-reduces the gradients (DistributedOptimizer); calling
        # apply_gradients() directly would skip the averaging.
        self.optimizer.minimize(loss, self.model.trainable_variables, tape=tape)
        if last:
            self.global_step.assign_add(1)
            self.moving_averages.apply(self.model.trainable_variables)
        correct = tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), labels)
        return loss, tf.reduce_mean(tf.cast(correct, tf.float32))

    def step(self, batches):
        """One synchronized update from backward_passes_per_step batches; (loss, accuracy)
        averaged over its passes."""
        passes = self.config.backward_passes_per_step
        losses, accuracies = [], []
        for index in range(passes):
            loss, accuracy = self.train_pass(next(batches), first=index == 0,
                                             last=index == passes - 1)
            losses.append(loss)
            accuracies.append(accuracy)
        if passes == 1:
            return loss, accuracy
        return tf.reduce_mean(losses), tf.reduce_mean(accuracies)


class LARS(tf.keras.optimizers.SGD):
    """SGD with layer-wise adaptive rate scaling (You, Gitman and Ginsburg 2017): the step of
    each weight matrix (kernel) is scaled by trust_coefficient x |w| / |g|, so every layer moves
    by a share of its own size whatever its gradient's scale; biases keep the global rate, as in
    the paper, and so do the weight matrices of global_rate_layers (layer names). Under
    Horovod, g is the all-reduced (averaged) gradient, and it holds the tutorial's weight decay,
    which is part of the loss."""

    def __init__(self, trust_coefficient, global_rate_layers=(), **kwargs):
        super().__init__(**kwargs)
        self.trust_coefficient = trust_coefficient
        self.global_rate_layers = tuple(global_rate_layers)

    def steps_at_global_rate(self, variable):
        return variable.shape.rank < 2 or variable.name.split("/")[0] in self.global_rate_layers

    def trust_ratio(self, gradient, variable):
        if self.steps_at_global_rate(variable):
            return tf.constant(1.0, gradient.dtype)
        weight_norm = tf.norm(tf.cast(variable, gradient.dtype))
        gradient_norm = tf.norm(gradient)
        return tf.where((weight_norm > 0) & (gradient_norm > 0),
                        self.trust_coefficient * weight_norm / gradient_norm,
                        tf.constant(1.0, gradient.dtype))

    def update_step(self, gradient, variable):
        super().update_step(gradient * self.trust_ratio(gradient, variable), variable)

    def get_config(self):
        return {**super().get_config(), "trust_coefficient": self.trust_coefficient,
                "global_rate_layers": self.global_rate_layers}


def check_loss(mean_loss, running_mean, step, replica):
    """Stop on NaN/Inf (the tutorial's NanTensorHook) or on a loss that explodes after warm-up.

    mean_loss is averaged over ranks, so every rank takes the same decision at the same step."""
    if not math.isfinite(mean_loss):
        raise UserError(f"loss is {mean_loss} at step {step}: training diverged "
                        f"(learning rate {replica.learning_rate():.4g}, {replica.lr_rule}); "
                        "lower --lr or --max_lr, or lengthen --warmup_epochs")
    if (running_mean is not None and step > replica.warmup_steps
            and mean_loss > LOSS_EXPLOSION_FACTOR * running_mean):
        raise UserError(f"loss exploded to {mean_loss:.3g} at step {step}, "
                        f"{mean_loss / running_mean:.1f}x its running mean {running_mean:.3g} "
                        f"(learning rate {replica.learning_rate():.4g}, {replica.lr_rule}); "
                        "lower --max_lr or use --lr_scaling sqrt")


def weights_digest(variables):
    """A short digest of the variables' values: equal on every rank while SGD is synchronous."""
    digest = hashlib.sha256()
    for variable in variables:
        digest.update(variable.numpy().tobytes())
    return digest.hexdigest()[:16]

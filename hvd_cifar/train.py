"""Train the CIFAR-10 tutorial CNN data-parallel with Horovod (cifar10_train.py, distributed).

    horovodrun -np 4 python -m hvd_cifar.train --data_dir data --train_dir runs/train
    python -m hvd_cifar.train --synthetic --max_steps 100      (one worker, no data)

Every rank pins one GPU (or a share of the CPU cores), builds the same network, reads its own
shard of the data and averages gradients with the others through hvd.DistributedOptimizer.
Rank 0 alone writes checkpoints, TensorBoard events and the log. Every line that exists because
of distribution is marked `# Horovod:` (grep -n "Horovod:" hvd_cifar/train.py).
"""
import dataclasses
import datetime
import hashlib
import math
import os
import signal
import sys
import time

import hvd_cifar  # noqa: F401  (quiets TensorFlow's start-up logging before it is imported)
from hvd_cifar import data, model as model_lib
from hvd_cifar.evaluate import restore_checkpoint
from hvd_cifar.config import (INITIAL_LEARNING_RATE, LEARNING_RATE_DECAY_FACTOR,
                              MOVING_AVERAGE_DECAY, NUM_EPOCHS_PER_DECAY, ArgumentParser,
                              UserError, fail, flag, non_negative_float, non_negative_int,
                              parse_into, positive_float, positive_int)

import tensorflow as tf
import horovod.tensorflow as hvd
from horovod.common.elastic import ObjectState

DEFAULT_WARMUP_EPOCHS = 5.0   # Goyal et al. 2017: linear warm-up over the first 5 epochs.
# The largest scaled rate measured stable on this network: 0.283 with warm-up keeps the
# tutorial's accuracy at global batch 1024 while 0.8 oscillates or diverges (issue 9's table);
# at 1024 here 0.4 and 0.5 show loss jumps and 0.3 does not (docs/results/lr_policy.md).
DEFAULT_MAX_LR = 0.3
# Stop when a logged loss exceeds this multiple of its running mean after warm-up.
LOSS_EXPLOSION_FACTOR = 4.0
CHECKPOINT_PREFIX = "ckpt"
# Synthetic runs count epochs as CIFAR-10's training set, so their schedule matches a real run.
SYNTHETIC_EXAMPLES_PER_EPOCH = 50_000


@dataclasses.dataclass
class TrainConfig:
    data_dir: str = flag("data", "folder holding cifar-10-batches-bin/ or "
                         f"{data.ARCHIVE_NAME}; the archive is downloaded there when missing")
    train_dir: str = flag("runs/train", "checkpoints, TensorBoard events and train.log "
                          "(rank 0 writes); an existing one is resumed")
    max_steps: int = flag(1_000_000, "synchronized steps to train for (counted across "
                          "resumes)", positive_int)
    batch_size: int = flag(128, "examples a rank processes in one backward pass; the global "
                           "batch is batch_size x ranks x backward_passes_per_step", positive_int)
    lr: float = flag(INITIAL_LEARNING_RATE, "initial learning rate of one worker, before "
                     "scaling by ranks x backward_passes_per_step", positive_float)
    lr_scaling: str = flag("linear", "how the rate grows with W = ranks x "
                           "backward_passes_per_step: lr x W, lr x sqrt(W), or lr",
                           choices=("linear", "sqrt", "none"))
    max_lr: float = flag(DEFAULT_MAX_LR, "cap on the scaled learning rate (this network "
                         "diverges with 0.8 at 8 workers); 0 means no cap", non_negative_float)
    warmup_epochs: float = flag(None, "epochs of linear warm-up from lr to the scaled rate "
                                f"(default: {DEFAULT_WARMUP_EPOCHS:g} when W > 1, "
                                "else 0)", non_negative_float)
    momentum: float = flag(0.0, "SGD momentum (the tutorial uses plain SGD)",
                           non_negative_float)
    log_frequency: int = flag(10, "log every this many steps; the loss checks and a stop on "
                              "SIGTERM/SIGINT also happen there", positive_int)
    checkpoint_every_steps: int = flag(1000, "write a checkpoint every this many steps (and "
                                       "at the end)", positive_int)
    keep_checkpoints: int = flag(5, "how many of the newest checkpoints to keep", positive_int)
    seed: int = flag(0, "seed of the initial weights, the shuffling and the distortions",
                     non_negative_int)
    synthetic: bool = flag(False, "train on random tensors instead of CIFAR-10 (smoke runs, "
                           "benchmarks)")
    fresh: bool = flag(False, "start over: move an existing train_dir aside to "
                       "<train_dir>.previous-<time> instead of resuming it")
    use_fp16: bool = flag(False, "compute in float16 with float32 variables (mixed_float16, "
                          "GPUs) and dynamic loss scaling")
    fp16_allreduce: bool = flag(False, "compress gradients to float16 for the all-reduce "
                                "(halves the traffic between hosts)")
    backward_passes_per_step: int = flag(1, "backward passes whose gradients are summed "
                                         "locally before one all-reduce and update",
                                         positive_int)
    threads_per_rank: int = flag(0, "TensorFlow threads of each CPU rank (0: the host's cores "
                                 "split between its ranks)", non_negative_int)
    xla: str = flag("auto", "compile the training step with XLA (auto: on GPUs only)",
                    choices=("auto", "on", "off"))
    summary_histograms: bool = flag(False, "also write the tutorial's activation histograms "
                                    "and sparsity at every log step")
    elastic: bool = flag(False, "keep training while workers leave or join: run under "
                         "horovodrun --min-np/--max-np --host-discovery-script (Gloo)")
    commit_every_steps: int = flag(10, "with --elastic, keep the state in memory every this "
                                   "many steps; a failing worker costs at most these steps",
                                   positive_int)
    data_url: str = flag(data.DATA_URL, "where to download the archive from: a mirror or a "
                         "file:// path")
    data_sha256: str = flag(data.DATA_SHA256, "expected sha256 of the downloaded archive")
    no_download: bool = flag(False, "fail instead of downloading when the data is missing")


# ---------------------------------------------------------------------------------------------
# Devices

def plan_devices(gpus, local_rank, local_size, cpu_count, threads_per_rank=0):
    """(GPU to make visible or None, threads for TensorFlow's intra-op pool) for this rank."""
    if gpus:
        if local_rank >= len(gpus):
            raise UserError(f"local rank {local_rank} has no GPU: this host shows {len(gpus)} "
                            f"GPUs but runs {local_size} ranks (start one rank per GPU)")
        return gpus[local_rank], None
    # Ranks on one host share its cores: oversubscribed thread pools make them all slower.
    return None, threads_per_rank or max(1, cpu_count // local_size)


def pin_devices(local_rank, local_size, threads_per_rank=0):
    """Horovod: one GPU per rank by local rank (memory growth on), else a share of the cores."""
    gpus = tf.config.list_physical_devices("GPU")
    gpu, threads = plan_devices(gpus, local_rank, local_size, len(os.sched_getaffinity(0)),
                                threads_per_rank)
    if gpu is not None:
        for device in gpus:
            tf.config.experimental.set_memory_growth(device, True)
        tf.config.set_visible_devices(gpu, "GPU")
        return f"GPU:{local_rank}"
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    return f"CPU/{threads} threads"


# ---------------------------------------------------------------------------------------------
# Learning rate

def scaled_learning_rate(lr, workers, lr_scaling, max_lr):
    """(peak rate, a sentence saying how it was reached) for a global batch of `workers` times
    one worker's batch."""
    factor = {"linear": workers, "sqrt": math.sqrt(workers), "none": 1}[lr_scaling]
    rate = lr * factor
    rule = f"{lr_scaling} scaling: {lr:g} x {factor:.4g}"
    if max_lr and rate > max_lr:
        rule += f" = {rate:.4g}, capped by --max_lr {max_lr:g}"
        rate = max_lr
    return rate, rule


class TutorialSchedule(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from base_lr to peak_lr, then the tutorial's staircase decay (x0.1 every
    350 epochs). Steps are synchronized updates; boundaries are given in steps computed from
    epochs, so they fall at the same data position whatever the number of ranks."""

    def __init__(self, base_lr, peak_lr, warmup_steps, decay_steps,
                 decay_factor=LEARNING_RATE_DECAY_FACTOR):
        self.base_lr, self.peak_lr = base_lr, peak_lr
        self.warmup_steps, self.decay_steps = warmup_steps, decay_steps
        self.decay_factor = decay_factor

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        decayed = self.peak_lr * tf.pow(self.decay_factor, tf.floor(step / self.decay_steps))
        if not self.warmup_steps:
            return decayed
        warming = self.base_lr + (self.peak_lr - self.base_lr) * step / self.warmup_steps
        return tf.where(step < self.warmup_steps, warming, decayed)

    def get_config(self):
        return dict(base_lr=self.base_lr, peak_lr=self.peak_lr, warmup_steps=self.warmup_steps,
                    decay_steps=self.decay_steps, decay_factor=self.decay_factor)


def learning_rate_schedule(config, size, steps_per_epoch):
    """(TutorialSchedule, rule sentence) for size ranks taking steps_per_epoch steps an epoch."""
    # Horovod: one update averages the gradients of size ranks x backward passes, a global
    # batch that many times one worker's, so the rate grows with it (Goyal et al. 2017).
    workers = size * config.backward_passes_per_step
    peak_lr, rule = scaled_learning_rate(config.lr, workers, config.lr_scaling, config.max_lr)
    warmup_epochs = config.warmup_epochs
    if warmup_epochs is None:
        # Horovod: warm up only when the rate was scaled.
        warmup_epochs = DEFAULT_WARMUP_EPOCHS if workers > 1 else 0.0
    schedule = TutorialSchedule(min(config.lr, peak_lr), peak_lr,
                                int(round(warmup_epochs * steps_per_epoch)),
                                int(NUM_EPOCHS_PER_DECAY * steps_per_epoch))
    return schedule, rule


# ---------------------------------------------------------------------------------------------
# The training state and step

class Trainer:
    """The model, its Horovod optimizer, the moving averages and the step counter, plus the
    compiled training step. Built identically on every rank."""

    def __init__(self, config, size, steps_per_epoch):
        self.config = config
        self.model = model_lib.inference(config.use_fp16)
        self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.rescale(size, steps_per_epoch)
        # The rate is set from the schedule before every step.
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
        self.optimizer = optimizer
        self.optimizer.build(self.model.trainable_variables)
        # The tutorial's ExponentialMovingAverage(0.9999, global_step): the decay is
        # min(0.9999, (1 + step) / (10 + step)), so the averages follow early training closely.
        self.moving_averages = tf.train.ExponentialMovingAverage(MOVING_AVERAGE_DECAY,
                                                                 num_updates=self.global_step)
        self.moving_averages.apply(self.model.trainable_variables)
        self.averaged_variables = [self.moving_averages.average(v)
                                   for v in self.model.trainable_variables]
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                              moving_averages=self.averaged_variables,
                                              global_step=self.global_step)
        jit_compile = {"on": True, "off": False,
                       "auto": bool(tf.config.list_logical_devices("GPU"))}[config.xla]
        # Horovod: XLA compiles the forward pass and loss (and so their gradient), never the
        # all-reduce: Horovod registers XLA kernels for GPU builds only, and on CPU a compiled
        # HorovodAllreduce fails ("No registered 'HorovodAllreduce' OpKernel for XLA_CPU_JIT").
        self.forward = tf.function(self._forward, jit_compile=jit_compile)

    def rescale(self, size, steps_per_epoch):
        """Set the learning-rate schedule for size ranks (again when an elastic job resizes)."""
        self.schedule, self.lr_rule = learning_rate_schedule(self.config, size, steps_per_epoch)
        self.warmup_steps = self.schedule.warmup_steps
        # Traced anew: the schedule's numbers are constants of the compiled pass.
        self.train_pass = tf.function(self._train_pass)

    def state_variables(self):
        return (self.model.variables + list(self.optimizer.variables) +
                self.averaged_variables + [self.global_step])

    def learning_rate(self):
        return float(self.schedule(self.global_step))

    def _forward(self, images, labels):
        logits = self.model(images, training=True)
        return model_lib.loss(self.model, logits, labels), logits

    def _train_pass(self, images, labels, first, last):
        """One backward pass, compiled as one call (the per-call cost is paid once a pass): the
        first of a step sets its rate, the last advances the step and the averages."""
        if first:
            self.optimizer.learning_rate.assign(self.schedule(self.global_step))
        with tf.GradientTape() as tape:
            loss, logits = self.forward(images, labels)
        # Horovod: minimize() all-reduces the gradients (DistributedOptimizer); calling
        # apply_gradients() directly would skip the averaging.
        self.optimizer.minimize(loss, self.model.trainable_variables, tape=tape)
        if last:
            self.global_step.assign_add(1)
            self.moving_averages.apply(self.model.trainable_variables)
        correct = tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), labels)
        return loss, tf.reduce_mean(tf.cast(correct, tf.float32))

    def step(self, batches):
        """One synchronized update from backward_passes_per_step batches; (loss, accuracy)."""
        passes = self.config.backward_passes_per_step
        for index in range(passes):
            images, labels = next(batches)
            loss, accuracy = self.train_pass(images, labels, first=index == 0,
                                             last=index == passes - 1)
        # The batch just trained on, for activation histograms (drawing another batch would
        # move this rank's data position).
        self.last_images = images
        return loss, accuracy


def weights_digest(variables):
    digest = hashlib.sha256()
    for variable in variables:
        digest.update(variable.numpy().tobytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Agreement between ranks

def on_every_rank(action):
    """Run action here; when it fails with a UserError on any rank, raise it on every rank.

    Horovod: without this a rank that fails alone leaves the others waiting in a collective."""
    try:
        result, error = action(), None
    except UserError as failure:
        result, error = None, str(failure)
    errors = [e for e in hvd.allgather_object(error) if e]
    if errors:
        raise UserError(errors[0])
    return result


# ---------------------------------------------------------------------------------------------
# train_dir

def prepare_train_dir(train_dir, fresh):
    """Create train_dir (and with --fresh move an old one aside); fail early when unwritable."""
    if fresh and os.path.isdir(train_dir) and os.listdir(train_dir):
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        previous = f"{train_dir.rstrip('/')}.previous-{stamp}"
        os.rename(train_dir, previous)
        print(f"--fresh: moved the previous run to {previous}", flush=True)
    try:
        os.makedirs(train_dir, exist_ok=True)
        probe = os.path.join(train_dir, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        raise UserError(f"--train_dir {train_dir} is not writable: {error.strerror}") from None


def restore_latest(trainer, train_dir):
    """Restore the newest checkpoint of train_dir into trainer; its path, or None."""
    path = tf.train.latest_checkpoint(train_dir)
    if path is not None:
        restore_checkpoint(trainer.checkpoint, path)
    return path


# ---------------------------------------------------------------------------------------------
# Logging

class Log:
    """Rank 0's output: the tutorial's log line on stdout and in train_dir/train.log, a progress
    bar instead on a terminal, and TensorBoard scalars."""

    def __init__(self, train_dir, max_steps):
        self.file = open(os.path.join(train_dir, "train.log"), "a")
        self.writer = tf.summary.create_file_writer(train_dir)
        # A bar only for a person at a terminal: mpirun also hands its ranks a pty, but there
        # the bar would be cut into prefixed pieces, so launched ranks print plain lines.
        launched = "OMPI_COMM_WORLD_RANK" in os.environ or "HOROVOD_RANK" in os.environ
        self.progress = (tf.keras.utils.Progbar(max_steps)
                         if sys.stdout.isatty() and not launched else None)

    def line(self, text, to_stdout=True):
        if to_stdout:
            print(text, flush=True)
        self.file.write(text + "\n")
        self.file.flush()

    def step(self, step, values):
        text = ("%s: step %d, loss = %.2f (%.1f examples/sec; %.3f sec/batch)"
                % (datetime.datetime.now(), step, values["loss"], values["examples_per_sec"],
                   values["sec_per_batch"]))
        self.line(text, to_stdout=self.progress is None)
        if self.progress is not None:
            # Keras ends the bar with a newline when step reaches max_steps.
            self.progress.update(step, [("loss", values["loss"]),
                                        ("accuracy", values["accuracy"])])
        with self.writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)

    def close(self):
        self.writer.close()
        self.file.close()


def write_histograms(model, images, writer, step):
    """The tutorial's _activation_summary: activation histograms and sparsity, and weights."""
    names = ("conv1", "conv2", "local3", "local4", "softmax_linear")
    activations = tf.keras.Model(model.input, [model.get_layer(n).output for n in names])(
        images, training=False)
    with writer.as_default(step=step):
        for name, activation in zip(names, activations):
            tf.summary.histogram(f"{name}/activations", activation)
            tf.summary.scalar(f"{name}/sparsity", tf.math.zero_fraction(activation))
        for variable in model.trainable_variables:
            tf.summary.histogram(variable.name, variable)


# ---------------------------------------------------------------------------------------------
# The driver

def input_batches(config, size, rank, local_rank, start_step):
    """(iterator of this rank's batches, steps per epoch). Horovod: shard by rank."""
    if config.synthetic:
        steps_per_epoch = SYNTHETIC_EXAMPLES_PER_EPOCH // (
            config.batch_size * size * config.backward_passes_per_step)
        return iter(data.synthetic_dataset(config.batch_size, config.seed + rank)), max(
            1, steps_per_epoch)

    def prepare():
        # Horovod: one process per host downloads or extracts; the others wait for it.
        if local_rank == 0:
            data.prepare(config.data_dir, config.data_url, config.data_sha256,
                         download=not config.no_download)

    on_every_rank(prepare)

    def open_shard():
        batches_dir = data.prepare(config.data_dir, download=False)
        paths, num_records = data.split_files(batches_dir, "train")
        _, batches_per_epoch = data.shard_sizes(num_records, config.batch_size, size)
        # Horovod: rank r reads shard r of size; every shard yields the same number of batches.
        dataset = data.train_dataset(paths, num_records, config.batch_size, num_shards=size,
                                     shard_index=rank, seed=config.seed,
                                     start_step=start_step * config.backward_passes_per_step)
        return iter(dataset), batches_per_epoch // config.backward_passes_per_step

    batches, steps_per_epoch = on_every_rank(open_shard)
    if steps_per_epoch == 0:
        raise UserError(f"--backward_passes_per_step {config.backward_passes_per_step} is more "
                        "than the batches in one epoch of a rank's shard")
    return batches, steps_per_epoch


class StopRequest:
    """Remembers a SIGTERM (Slurm preemption or time limit, via --signal) or SIGINT (Ctrl-C);
    the loop acts on it at the next log step, where every rank learns of it together."""

    def __init__(self):
        self.signal_number = 0
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signal_number, self.request)

    def request(self, signal_number, frame):
        self.signal_number = signal_number


class Stopped(Exception):
    """Training stopped on request after writing a checkpoint; exit with 128 + signal."""

    def __init__(self, signal_number):
        super().__init__(signal_number)
        self.signal_number = signal_number


def check_loss(mean_loss, running_mean, step, trainer):
    """Stop on NaN/Inf (the tutorial's NanTensorHook) or on a loss that explodes after warm-up.

    mean_loss is averaged over ranks, so every rank takes the same decision at the same step."""
    if not math.isfinite(mean_loss):
        raise UserError(f"loss is {mean_loss} at step {step}: training diverged "
                        f"(learning rate {trainer.learning_rate():.4g}, {trainer.lr_rule}); "
                        "lower --lr or --max_lr, or lengthen --warmup_epochs")
    if (running_mean is not None and step > trainer.warmup_steps
            and mean_loss > LOSS_EXPLOSION_FACTOR * running_mean):
        raise UserError(f"loss exploded to {mean_loss:.3g} at step {step}, "
                        f"{mean_loss / running_mean:.1f}x its running mean {running_mean:.3g} "
                        f"(learning rate {trainer.learning_rate():.4g}, {trainer.lr_rule}); "
                        "lower --max_lr or use --lr_scaling sqrt")


# Horovod: a rank that waits in a collective longer than this (another rank died or hangs)
# shuts the job down instead of hanging forever; the default, 0, never does.
STALL_SHUTDOWN_SECONDS = "300"


def set_launch_defaults():
    """Environment defaults that Horovod and Open MPI read at hvd.init(); a value the user
    set wins."""
    os.environ.setdefault("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", STALL_SHUTDOWN_SECONDS)
    if not tf.config.list_physical_devices("GPU"):
        # Open MPI busy-polls while a rank waits, taking the cores CPU ranks compute on:
        # yielding made 2 MPI ranks on 2 cores 2.2x faster (docs/results/benchmark.md).
        os.environ.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")


def train(config):
    set_launch_defaults()
    if config.elastic and os.environ.get("HOROVOD_ELASTIC") != "1":
        raise UserError("--elastic needs an elastic launch: horovodrun --min-np N --max-np M "
                        "--host-discovery-script SCRIPT (see launch/elastic.sh)")
    # Horovod: start the controller (MPI or Gloo) and learn this process's place in the job.
    hvd.init()
    device = pin_devices(hvd.local_rank(), hvd.local_size(), config.threads_per_rank)
    # Python, NumPy and TensorFlow: Keras initializers without a seed draw one from Python.
    tf.keras.utils.set_random_seed(config.seed)
    # The schedule is set again once the data (and so the steps in an epoch) is known.
    trainer = Trainer(config, hvd.size(), steps_per_epoch=1)
    job = TrainingJob(config, trainer, device)
    if not config.elastic:
        job.run()
        return
    # Horovod elastic: the state lives in host memory, committed every commit_every_steps; a
    # worker that fails rolls everyone back to the last commit, and a worker that joins
    # receives the state from rank 0. No collective may run before hvd.elastic.run syncs the
    # state: a joining worker would meet the others in the wrong call.
    state = ElasticState(trainer.state_variables())
    hvd.elastic.run(job.run)(state)


class ElasticState(ObjectState):
    """Horovod elastic state: the trainer's variables (model, optimizer, moving averages, step)
    copied to host memory at every commit, plus whether rank 0 has set the run up.

    horovod.tensorflow.elastic.TensorFlowState does not re-broadcast its variables in eager
    mode (0.28.1 syncs only through a session), so a joining worker would keep its own."""

    def __init__(self, variables):
        self.variables = variables
        self.copy_to_host()
        super().__init__(bcast_object=hvd.broadcast_object, get_rank=hvd.rank, set_up=False)

    def copy_to_host(self):
        self.committed = [variable.numpy() for variable in self.variables]

    def save(self):
        self.copy_to_host()
        super().save()

    def restore(self):
        for variable, value in zip(self.variables, self.committed):
            variable.assign(value)
        super().restore()

    def sync(self):
        hvd.broadcast_variables(self.variables, root_rank=0)
        self.copy_to_host()
        super().sync()


class TrainingJob:
    """One training run: rank 0's train_dir set-up and restore, the input, the loop and the
    final check. In an elastic job run() starts again after every change of workers."""

    def __init__(self, config, trainer, device):
        self.config, self.trainer, self.device = config, trainer, device
        self.stop_request = StopRequest()
        self.log = self.manager = None  # rank 0's, opened by whichever process is rank 0

    def run(self, elastic_state=None):
        config, trainer = self.config, self.trainer
        rank, size = hvd.rank(), hvd.size()
        is_chief = rank == 0  # Horovod: rank 0 alone writes checkpoints, summaries and the log.
        restored = None
        if elastic_state is None or not elastic_state.set_up:
            on_every_rank(lambda: prepare_train_dir(config.train_dir, config.fresh)
                          if is_chief else None)
            restored = on_every_rank(lambda: restore_latest(trainer, config.train_dir)
                                     if is_chief else None)
            # Horovod: every rank starts from rank 0's initial (or restored) state.
            hvd.broadcast_variables(trainer.state_variables(), root_rank=0)
        step = int(trainer.global_step.numpy())
        # Horovod: rank 0's step decides every rank's data position, and the rate follows the
        # number of ranks.
        batches, steps_per_epoch = input_batches(config, size, rank, hvd.local_rank(), step)
        trainer.rescale(size, steps_per_epoch)
        if elastic_state is not None:
            elastic_state.set_up = True
            elastic_state.commit()
        # Horovod: collect each rank's device so rank 0 can show the whole job in one line.
        devices = hvd.allgather_object(self.device)
        if is_chief and self.log is None:
            self.log = Log(config.train_dir, config.max_steps)
            self.manager = tf.train.CheckpointManager(trainer.checkpoint, config.train_dir,
                                                      max_to_keep=config.keep_checkpoints,
                                                      checkpoint_name=CHECKPOINT_PREFIX)
        if is_chief:
            controller = "MPI" if hvd.mpi_enabled() else "Gloo"
            elastic = " (elastic)" if elastic_state is not None else ""
            self.log.line(f"hvd_cifar: {size} ranks ({hvd.local_size()} on this host), "
                          f"{controller} controller{elastic}, devices: "
                          + ", ".join(f"{r}={d}" for r, d in enumerate(devices)))
            self.log.line(f"hvd_cifar: global batch {self.global_batch(size)} "
                          f"({config.batch_size} x {size} ranks x "
                          f"{config.backward_passes_per_step} passes), {steps_per_epoch} steps "
                          f"an epoch, learning rate {trainer.schedule.peak_lr:.4g} "
                          f"({trainer.lr_rule}), warm-up {trainer.warmup_steps} steps")
            if restored:
                self.log.line(f"hvd_cifar: resuming from {restored} at step {step}")
            else:
                self.log.line(f"hvd_cifar: {'continuing' if step else 'starting'} at step "
                              f"{step} in {config.train_dir}")
        step = self.loop(step, batches, elastic_state)
        self.finish(step)

    def global_batch(self, size):
        return self.config.batch_size * size * self.config.backward_passes_per_step

    def save_checkpoint(self, step):
        if hvd.rank() == 0 and tf.train.latest_checkpoint(self.config.train_dir) != os.path.join(
                self.config.train_dir, f"{CHECKPOINT_PREFIX}-{step}"):
            self.manager.save(checkpoint_number=step)

    def loop(self, step, batches, elastic_state):
        """Train from step to max_steps; the step reached."""
        config, trainer, log = self.config, self.trainer, self.log
        is_chief = hvd.rank() == 0
        global_batch = self.global_batch(hvd.size())
        interval_losses, interval_accuracies = [], []
        running_loss = None
        interval_start = time.perf_counter()
        while step < config.max_steps:
            loss, accuracy = trainer.step(batches)
            step += 1
            interval_losses.append(loss)
            interval_accuracies.append(accuracy)
            if elastic_state is not None and step % config.commit_every_steps == 0:
                # Horovod elastic: keep this step in memory; raises when workers changed.
                elastic_state.commit()
            if step % config.log_frequency and step % config.checkpoint_every_steps and (
                    step < config.max_steps):
                continue
            # Horovod: losses and accuracies are averaged over ranks, so all ranks see one
            # number; a stop request on any rank makes the averaged signal non-zero on all.
            mean_loss, mean_accuracy, stop_signal = (float(v) for v in hvd.allreduce(
                tf.stack([tf.reduce_mean(interval_losses), tf.reduce_mean(interval_accuracies),
                          float(self.stop_request.signal_number)]),
                op=hvd.Average, name="interval_metrics"))
            check_loss(mean_loss, running_loss, step, trainer)
            running_loss = (mean_loss if running_loss is None
                            else 0.9 * running_loss + 0.1 * mean_loss)
            elapsed = time.perf_counter() - interval_start
            if is_chief:
                log.step(step, {"loss": mean_loss, "accuracy": mean_accuracy,
                                # the rate of the update that made this step
                                "learning_rate": float(trainer.schedule(step - 1)),
                                "examples_per_sec": global_batch * len(interval_losses) / elapsed,
                                "sec_per_batch": elapsed / len(interval_losses)})
                if config.summary_histograms:
                    write_histograms(trainer.model, trainer.last_images, log.writer, step)
            if step % config.checkpoint_every_steps == 0:
                self.save_checkpoint(step)
            if stop_signal:
                self.stop(step)
            interval_losses, interval_accuracies = [], []
            interval_start = time.perf_counter()
        return step

    def stop(self, step):
        signal_number = self.stop_request.signal_number or signal.SIGTERM
        self.save_checkpoint(step)
        # Horovod: nobody exits before rank 0's checkpoint is complete, since the launcher
        # kills the remaining ranks as soon as one has exited.
        hvd.allreduce(tf.constant(0.0), name="checkpoint_written")
        if hvd.rank() == 0:
            self.log.line(f"hvd_cifar: stopped by {signal.Signals(signal_number).name} at step "
                          f"{step}; checkpoint written, run the same command again to resume")
            self.log.close()
        raise Stopped(signal_number)

    def finish(self, step):
        self.save_checkpoint(step)
        # Horovod: a last check that synchronous SGD kept every rank's weights identical.
        digests = hvd.allgather_object(weights_digest(self.trainer.model.trainable_variables))
        if hvd.rank() == 0:
            self.log.line(f"hvd_cifar: finished at step {step}; weights sha256 by rank: " +
                          " ".join(f"{r}={d}" for r, d in enumerate(digests)))
            if len(set(digests)) > 1:
                raise UserError("the ranks' weights differ after training: gradients were not "
                                "averaged identically")
            self.log.close()


def main(argv=None):
    parser = ArgumentParser(prog="python -m hvd_cifar.train",
                            description="Train the CIFAR-10 tutorial CNN with Horovod "
                            "(one process per GPU or CPU share, under horovodrun, mpirun or "
                            "srun; alone it is a one-worker job).")
    config = parse_into(TrainConfig, parser, argv)
    try:
        train(config)
    except Stopped as stopped:
        sys.exit(128 + stopped.signal_number)
    except UserError as error:
        # Horovod: every rank reached the same error; rank 0 says it once.
        if hvd.is_initialized() and hvd.rank() != 0:
            sys.exit(1)
        fail(error)


if __name__ == "__main__":
    main()

"""Train the CIFAR-10 tutorial CNN data-parallel with Horovod (cifar10_train.py, distributed).

    horovodrun -np 4 python -m hvd_cifar.train --data_dir data --train_dir runs/train
    python -m hvd_cifar.train --synthetic --max_steps 100      (one worker, no data)

Every rank pins one GPU (or a share of the CPU cores), builds the same network, reads its own
shard of the data and averages gradients with the others through hvd.DistributedOptimizer.
Rank 0 alone writes checkpoints, TensorBoard events and the log. Read train() from the top: set
up, input, restore, loop, finish. Every line that exists because of distribution is marked
`# Horovod:` (grep -n "Horovod:" hvd_cifar/train.py).
"""
import dataclasses
import datetime
import os
import signal
import sys
import time

import tensorflow as tf
import horovod.tensorflow as hvd

from hvd_cifar import checkpoint as checkpoint_lib, data
from hvd_cifar.config import (Stopped, UserError, flag, non_negative_int, parse_command,
                              positive_int, run_command)
from hvd_cifar.distributed import (ElasticState, StopRequest, fail_together, pin_devices,
                                   set_launch_defaults)
from hvd_cifar.trainer import Trainer, TrainerConfig, check_loss, weights_digest

# Synthetic runs count epochs as CIFAR-10's training set, so their schedule matches a real run.
SYNTHETIC_EXAMPLES_PER_EPOCH = 50_000


@dataclasses.dataclass
class TrainConfig(TrainerConfig):
    """The train command's flags: the step's (TrainerConfig) and the driver's."""
    data_dir: str = flag("data", "folder holding cifar-10-batches-bin/ or "
                         f"{data.ARCHIVE_NAME}; the archive is downloaded there when missing")
    train_dir: str = flag("runs/train", "checkpoints, TensorBoard events and train.log "
                          "(rank 0 writes); an existing one is resumed")
    max_steps: int = flag(1_000_000, "synchronized steps to train for (counted across "
                          "resumes)", positive_int)
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
    threads_per_rank: int = flag(0, "TensorFlow threads of each CPU rank (0: the host's cores "
                                 "split between its ranks)", non_negative_int)
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


def train(config):
    """Set up, open the input, build the trainer, then run (restore, loop, finish)."""
    set_launch_defaults()
    if config.elastic and os.environ.get("HOROVOD_ELASTIC") != "1":
        raise UserError("--elastic needs an elastic launch: horovodrun --min-np N --max-np M "
                        "--host-discovery-script SCRIPT (see launch/elastic.sh)")
    # Horovod: start the controller (MPI or Gloo) and learn this process's place in the job.
    hvd.init()
    # Horovod: one GPU per rank, by its rank on this host.
    device = pin_devices(hvd.local_rank(), hvd.local_size(), config.threads_per_rank)
    # Python, NumPy and TensorFlow: Keras initializers without a seed draw one from Python.
    tf.keras.utils.set_random_seed(config.seed)
    run = TrainingRun(config, device)
    if not config.elastic:
        # The epoch's length is known before the trainer is built, so its schedule is final.
        run.input = open_input(config, hvd.size(), hvd.local_rank())
        run.trainer = Trainer(config, hvd.size(), run.input.steps_per_epoch)
        run()
        return
    # Horovod: an elastic job keeps its state in host memory, committed every
    # commit_every_steps. No collective may run before hvd.elastic.run syncs that state (a
    # joining worker would meet the others in the wrong call), so the input is opened and the
    # schedule set inside the run, again after every change of workers.
    run.trainer = Trainer(config, size=None, steps_per_epoch=None)
    state = ElasticState(run.trainer.state_variables())  # Horovod:
    hvd.elastic.run(run)(state)  # Horovod:


# ---------------------------------------------------------------------------------------------
# Input

class Input:
    """Where this job's batches come from: the CIFAR-10 folder (None for synthetic data) and
    the steps in one epoch of the global batch."""

    def __init__(self, batches_dir, steps_per_epoch):
        self.batches_dir, self.steps_per_epoch = batches_dir, steps_per_epoch


def open_input(config, size, local_rank):
    """Make the data ready on every host and count an epoch's steps for size ranks."""
    passes = config.backward_passes_per_step
    if config.synthetic:
        return Input(None, max(1, SYNTHETIC_EXAMPLES_PER_EPOCH // (config.batch_size * size *
                                                                   passes)))

    def prepare():
        # Horovod: one process per host downloads or extracts; the others wait for it.
        if local_rank == 0:
            data.prepare(config.data_dir, config.data_url, config.data_sha256,
                         download=not config.no_download)

    fail_together(prepare)  # Horovod:

    def count():
        batches_dir = data.prepare(config.data_dir, download=False)
        _, num_records = data.split_files(batches_dir, "train")
        # Horovod: every shard yields the same number of batches.
        _, batches_per_epoch = data.shard_sizes(num_records, config.batch_size, size)
        return Input(batches_dir, batches_per_epoch // passes)

    opened = fail_together(count)  # Horovod:
    if opened.steps_per_epoch == 0:
        raise UserError(f"--backward_passes_per_step {passes} is more than the batches in one "
                        "epoch of a rank's shard")
    return opened


def rank_batches(config, opened, size, rank, start_step):
    """This rank's batches from start_step on."""
    if opened.batches_dir is None:
        return iter(data.synthetic_dataset(config.batch_size, config.seed + rank))
    paths, num_records = data.split_files(opened.batches_dir, "train")
    # Horovod: rank r reads shard r of size; rank 0's step decides every rank's position.
    return iter(data.train_dataset(paths, num_records, config.batch_size, num_shards=size,
                                   shard_index=rank, seed=config.seed,
                                   start_step=start_step * config.backward_passes_per_step))


# ---------------------------------------------------------------------------------------------
# The run: restore, loop, finish

class TrainingRun:
    """One training run. In an elastic job hvd.elastic.run calls it again after every change
    of workers, with the state it keeps in memory."""

    def __init__(self, config, device):
        self.config, self.device = config, device
        self.trainer = self.input = None
        self.stop_request = StopRequest()
        self.log = self.checkpoints = None  # rank 0's, opened by whichever process is rank 0

    def __call__(self, elastic_state=None):
        config, trainer = self.config, self.trainer
        rank, size = hvd.rank(), hvd.size()
        is_chief = rank == 0  # Horovod: rank 0 alone writes checkpoints, summaries and the log.
        restored = None
        if elastic_state is None or not elastic_state.set_up:
            fail_together(lambda: prepare_train_dir(config.train_dir, config.fresh)  # Horovod:
                          if is_chief else None)
            restored = fail_together(  # Horovod: rank 0 restores...
                lambda: checkpoint_lib.restore_latest(trainer.checkpoint, config.train_dir)
                if is_chief else None)
            # Horovod: ...and every rank starts from rank 0's initial (or restored) state.
            hvd.broadcast_variables(trainer.state_variables(), root_rank=0)
        step = int(trainer.global_step.numpy())
        if elastic_state is not None:
            # Horovod: the workers may have changed, and with them the shards and the rate.
            self.input = open_input(config, size, hvd.local_rank())
            trainer.rescale(size, self.input.steps_per_epoch)
            elastic_state.set_up = True
            elastic_state.commit()
        batches = rank_batches(config, self.input, size, rank, step)
        # Horovod: collect each rank's device so rank 0 can show the whole job in one line.
        devices = hvd.allgather_object(self.device)
        if is_chief:
            self.open_output()
            self.announce(size, devices, step, restored, elastic_state is not None)
        step = self.loop(step, batches, elastic_state)
        self.finish(step)

    def open_output(self):
        """Rank 0's log, TensorBoard writer and checkpoint manager, once per process."""
        if self.log is None:
            self.log = Log(self.config.train_dir, self.config.max_steps)
            self.checkpoints = checkpoint_lib.manager(self.trainer.checkpoint,
                                                      self.config.train_dir,
                                                      self.config.keep_checkpoints)

    def announce(self, size, devices, step, restored, elastic):
        config, trainer = self.config, self.trainer
        controller = "MPI" if hvd.mpi_enabled() else "Gloo"  # Horovod:
        self.log.line(f"hvd_cifar: {size} ranks ({hvd.local_size()} on this host), "
                      f"{controller} controller{' (elastic)' if elastic else ''}, devices: "
                      + ", ".join(f"{r}={d}" for r, d in enumerate(devices)))
        self.log.line(f"hvd_cifar: global batch {self.global_batch(size)} "
                      f"({config.batch_size} x {size} ranks x "
                      f"{config.backward_passes_per_step} passes), "
                      f"{self.input.steps_per_epoch} steps an epoch, learning rate "
                      f"{trainer.schedule.peak_lr:.4g} ({trainer.lr_rule}), warm-up "
                      f"{trainer.warmup_steps} steps")
        if restored:
            self.log.line(f"hvd_cifar: resuming from {restored} at step {step}")
        else:
            self.log.line(f"hvd_cifar: {'continuing' if step else 'starting'} at step "
                          f"{step} in {config.train_dir}")

    def global_batch(self, size):
        return self.config.batch_size * size * self.config.backward_passes_per_step

    def save_checkpoint(self, step):
        if hvd.rank() != 0:  # Horovod: rank 0 alone writes.
            return
        path = os.path.join(self.config.train_dir, f"{checkpoint_lib.CHECKPOINT_PREFIX}-{step}")
        if tf.train.latest_checkpoint(self.config.train_dir) != path:
            self.checkpoints.save(checkpoint_number=step)

    def loop(self, step, batches, elastic_state):
        """Train from step to max_steps; the step reached."""
        config, trainer, log = self.config, self.trainer, self.log
        is_chief = hvd.rank() == 0  # Horovod:
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
                # Horovod: keep this step in memory; raises when workers changed.
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
        if hvd.rank() == 0:  # Horovod:
            self.log.line(f"hvd_cifar: stopped by {signal.Signals(signal_number).name} at step "
                          f"{step}; checkpoint written, run the same command again to resume")
            self.log.close()
        raise Stopped(signal_number)

    def finish(self, step):
        self.save_checkpoint(step)
        # Horovod: a last check that synchronous SGD kept every rank's weights identical.
        digests = hvd.allgather_object(weights_digest(self.trainer.model.trainable_variables))
        if hvd.rank() == 0:  # Horovod:
            self.log.line(f"hvd_cifar: finished at step {step}; weights sha256 by rank: " +
                          " ".join(f"{r}={d}" for r, d in enumerate(digests)))
            if len(set(digests)) > 1:
                raise UserError("the ranks' weights differ after training: gradients were not "
                                "averaged identically")
            self.log.close()


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


def main(argv=None):
    config = parse_command(TrainConfig, "python -m hvd_cifar.train",
                           "Train the CIFAR-10 tutorial CNN with Horovod (one process per GPU "
                           "or CPU share, under horovodrun, mpirun or srun; alone it is a "
                           "one-worker job).", argv)
    run_command(lambda: train(config))


if __name__ == "__main__":
    main()

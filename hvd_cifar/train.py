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
import re
import shutil
import signal
import socket
import sys
import time

import tensorflow as tf
import horovod.tensorflow as hvd

from hvd_cifar import checkpoint as checkpoint_lib, data, train_dir as train_dir_lib
from hvd_cifar.config import (RankFailure, Stopped, UserError, first_line, flag,
                              non_negative_float, non_negative_int, parse_command, positive_int,
                              run_command, say, seed_int)
from hvd_cifar.distributed import (ElasticState, LauncherWatch, StopRequest, Watchdog,
                                   fail_together, pin_devices, set_launch_defaults, set_timeline)
from hvd_cifar.trainer import Trainer, TrainerConfig, check_loss, weights_digest

# Synthetic runs count epochs as CIFAR-10's training set, so their schedule matches a real run.
SYNTHETIC_EXAMPLES_PER_EPOCH = 50_000
# Longer than anything a healthy rank waits for between two marks of the watchdog: a
# checkpoint on a slow shared file system, the first step's tracing or XLA compilation, a long
# log interval on a slow device. A hung collective otherwise waits forever.
DEFAULT_HANG_TIMEOUT_SECONDS = 600.0


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
                     seed_int)
    synthetic: bool = flag(False, "train on random tensors instead of CIFAR-10 (smoke runs, "
                           "benchmarks)")
    fresh: bool = flag(False, "start over: move an existing train_dir aside to "
                       "<train_dir>.previous-<time> instead of resuming it")
    take_over_train_dir: bool = flag(False, "take the train_dir over even though its lock "
                                     "says another run is using it (only when that run is gone)")
    horovod_timeline: str = flag(None, "write Horovod's timeline (negotiation and all-reduce "
                                 "of every tensor; rank 0) to this file, for chrome://tracing "
                                 "or ui.perfetto.dev", str)
    horovod_timeline_mark_cycles: bool = flag(False, "mark Horovod's background cycles in the "
                                              "timeline")
    hang_timeout_secs: float = flag(DEFAULT_HANG_TIMEOUT_SECONDS, "end the job when a rank has "
                                    "waited this long for a step, its all-reduce or a "
                                    "checkpoint (another rank hangs); 0 never does",
                                    non_negative_float)
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
    set_timeline(config.horovod_timeline, config.horovod_timeline_mark_cycles)
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
    try:
        if not config.elastic:
            # The epoch's length is known before the trainer is built, so its schedule is final.
            run.input = open_input(config, hvd.size(), hvd.local_rank())
            run.trainer = Trainer(config, hvd.size(), run.input.steps_per_epoch)
            run()
            return
        train_elastic(config, run)
    finally:
        run.release_train_dir()


def train_elastic(config, run):
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

# What a collective raises in a rank whose peers stopped answering or died (Gloo's timeout, a
# closed connection, Horovod shutting down after another rank failed).
LOST_PEER_MARKERS = ("Horovod", "Gloo", "gloo", "Connection", "connection")


class TrainingRun:
    """One training run. In an elastic job hvd.elastic.run calls it again after every change
    of workers, with the state it keeps in memory."""

    def __init__(self, config, device):
        self.config, self.device = config, device
        self.trainer = self.input = None
        self.stop_request = StopRequest()
        # Horovod: signalling horovodrun itself stops every rank, like signalling the ranks.
        LauncherWatch(self.stop_request)
        self.watchdog = Watchdog(config.hang_timeout_secs, hvd.rank(), socket.gethostname())
        self.watchdog.on_hang = self.release_train_dir
        self.log = self.checkpoints = None  # rank 0's, opened by whichever process is rank 0
        self.lock = None  # rank 0's claim on the train_dir
        self.notes = []   # rank 0's lines about the train_dir, said once the log is open
        self.previous_run = None  # how the run before this one in the train_dir was set up
        self.last_checkpoint_step = None
        self.saved_on_request = None  # the step rank 0 wrote when a stop was requested

    def __call__(self, elastic_state=None):
        config, trainer = self.config, self.trainer
        rank, size = hvd.rank(), hvd.size()
        is_chief = rank == 0  # Horovod: rank 0 alone writes checkpoints, summaries and the log.
        restored = None
        if elastic_state is None or not elastic_state.set_up:
            # Horovod: rank 0 claims the train_dir and restores...
            restored = fail_together(lambda: self.claim_and_restore() if is_chief else None)
            # Horovod: ...and every rank starts from rank 0's initial (or restored) state.
            hvd.broadcast_variables(trainer.state_variables(), root_rank=0)
        step = int(trainer.global_step.numpy())
        if self.last_checkpoint_step is None and restored is not None:
            self.last_checkpoint_step = step  # Horovod: every rank knows it from the broadcast
        self.note_resume_point()
        if elastic_state is not None:
            # Horovod: the workers may have changed, and with them the shards and the rate.
            self.input = open_input(config, size, hvd.local_rank())
            trainer.rescale(size, self.input.steps_per_epoch)
            elastic_state.set_up = True
            elastic_state.commit()
        batches = rank_batches(config, self.input, size, rank, step)
        # Horovod: collect each rank's device so rank 0 can show the whole job in one line.
        devices = hvd.allgather_object(self.device)
        # Horovod: rank 0 opens the log and says how the run is set up.
        fail_together(lambda: self.open_output(size, devices, step, restored,
                                               elastic_state is not None) if is_chief else None)
        if elastic_state is not None:
            step = self.loop(step, batches, elastic_state)
        else:
            step = self.loop_reporting_lost_peers(step, batches)
        self.finish(step)

    def claim_and_restore(self):
        """Rank 0: lock the train_dir, clean what a killed run left, restore its newest
        checkpoint; the checkpoint's path or None."""
        config = self.config
        if config.fresh and os.path.isdir(config.train_dir) and os.listdir(config.train_dir):
            # Moving a folder aside is for a run that is over: its lock must be free too.
            train_dir_lib.TrainDirLock(config.train_dir, config.take_over_train_dir).release()
        created = train_dir_lib.prepare(config.train_dir, config.fresh)
        try:
            self.lock = train_dir_lib.TrainDirLock(config.train_dir, config.take_over_train_dir)
        except UserError:
            if created:  # a run that could not start leaves nothing behind
                shutil.rmtree(config.train_dir, ignore_errors=True)
            raise
        self.notes += self.lock.notes
        for leftover in train_dir_lib.remove_unfinished_checkpoints(config.train_dir):
            self.notes.append(f"removed {leftover}, a checkpoint a stopped run did not finish")
        self.previous_run = train_dir_lib.read_run_record(config.train_dir)
        restored, notes = checkpoint_lib.restore_latest(self.trainer.checkpoint,
                                                        config.train_dir,
                                                        use_fp16=config.use_fp16)
        self.notes += notes
        return restored

    def release_train_dir(self):
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def note_resume_point(self):
        if self.last_checkpoint_step is not None:
            self.watchdog.resume_hint = ("; rerun the same command to resume from step "
                                         f"{self.last_checkpoint_step}")
        else:
            self.watchdog.resume_hint = "; no checkpoint was written yet"

    def loop_reporting_lost_peers(self, step, batches):
        """The loop, where a collective that fails because another rank is gone ends this
        rank with one line naming it (rather than Horovod's traceback)."""
        try:
            return self.loop(step, batches, None)
        except tf.errors.OpError as error:
            if not any(marker in str(error) for marker in LOST_PEER_MARKERS):
                raise
            self.save_after_lost_peers()
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            # The reason is a line of Horovod's or Gloo's, not one of TensorFlow's node trace.
            reasons = [line for line in lines if any(m in line for m in LOST_PEER_MARKERS)
                       and "node" not in line and not line.startswith("File ")]
            # TensorFlow appends the failing node's name in [[...]]: not the user's business.
            reason = (re.sub(r"\s*\[\[.*", "", reasons[-1]).split(". ")[0] if reasons
                      else "a collective failed")
            raise RankFailure(
                f"rank {hvd.rank()} on {socket.gethostname()} lost the other ranks at step "
                f"{int(self.trainer.global_step.numpy()) + 1} ({reason[:200]})"
                f"{self.watchdog.resume_hint}") from None
    def open_output(self, size, devices, step, restored, elastic):
        """Rank 0's log, TensorBoard writer and checkpoint manager (once per process), and
        the run's opening lines."""
        if self.log is None:
            self.log = Log(self.config.train_dir, self.config.max_steps)
            self.checkpoints = checkpoint_lib.manager(self.trainer.checkpoint,
                                                      self.config.train_dir,
                                                      self.config.keep_checkpoints)
        self.announce(size, devices, step, restored, elastic)
        self.check_room_for_checkpoints()

    def checkpoint_bytes(self):
        return sum(v.numpy().nbytes for v in self.trainer.state_variables())

    def check_room_for_checkpoints(self):
        """Say so when the disk cannot hold the checkpoints the run keeps (plus the one being
        written)."""
        config, size = self.config, self.checkpoint_bytes()
        needed = size * (config.keep_checkpoints + 1)
        free = train_dir_lib.free_bytes(config.train_dir)
        if free < needed:
            self.log.line(f"hvd_cifar: warning: --train_dir {config.train_dir} has "
                          f"{free / 1e6:.1f} MB free; keeping {config.keep_checkpoints} "
                          f"checkpoints of {size / 1e6:.1f} MB needs {needed / 1e6:.1f} MB "
                          "(one more while a new one is written)")

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
        for note in self.notes:
            self.log.line(f"hvd_cifar: {note}")
        self.notes = []
        record = {"ranks": size, "global_batch": self.global_batch(size),
                  "steps_per_epoch": self.input.steps_per_epoch, "lr_rule": trainer.lr_rule,
                  "momentum": config.momentum, "use_fp16": config.use_fp16}
        if restored:
            self.log.line(f"hvd_cifar: resuming from {restored} at step {step}")
            changed = train_dir_lib.changes(self.previous_run, record)
            if changed:
                self.log.line("hvd_cifar: resuming with changes: " + ", ".join(changed))
            if step >= config.max_steps:
                self.log.line(f"hvd_cifar: already at step {step}, at or past --max_steps "
                              f"{config.max_steps}: nothing to train (raise --max_steps to go "
                              "on)")
        else:
            self.log.line(f"hvd_cifar: {'continuing' if step else 'starting'} at step "
                          f"{step} in {config.train_dir}")
        train_dir_lib.write_run_record(config.train_dir, record)

    def global_batch(self, size):
        return self.config.batch_size * size * self.config.backward_passes_per_step

    def save_checkpoint(self, step):
        self.watchdog.waiting_for(step, "the checkpoint of this step")
        # Horovod: rank 0 alone writes, and every rank stops when it could not.
        fail_together(lambda: self.write_checkpoint(step) if hvd.rank() == 0 else None)
        self.last_checkpoint_step = step
        self.note_resume_point()

    def write_checkpoint(self, step):
        train_dir = self.config.train_dir
        newest = self.checkpoints.latest_checkpoint
        if newest == os.path.join(train_dir, f"{checkpoint_lib.CHECKPOINT_PREFIX}-{step}"):
            return
        try:
            self.checkpoints.save(checkpoint_number=step)
        except (tf.errors.OpError, OSError) as error:
            train_dir_lib.remove_unfinished_checkpoints(train_dir)
            raise UserError(
                f"cannot write checkpoint {step} to --train_dir {train_dir}: "
                f"{first_line(error)[:300]}; "
                f"a checkpoint needs {self.checkpoint_bytes() / 1e6:.1f} MB, "
                f"{train_dir_lib.free_bytes(train_dir) / 1e6:.1f} MB are free; the newest "
                f"complete checkpoint is {newest}") from None

    def loop(self, step, batches, elastic_state):
        """Train from step to max_steps; the step reached."""
        config, trainer = self.config, self.trainer
        is_chief = hvd.rank() == 0  # Horovod:
        global_batch = self.global_batch(hvd.size())
        interval_losses, interval_accuracies = [], []
        running_loss = None
        interval_start = time.perf_counter()
        first_step = True
        while step < config.max_steps:
            if first_step:
                # Tracing (and compiling) the step takes every rank long: not a hang.
                self.watchdog.waiting_for(step + 1, "the first training step (traced and "
                                          "compiled) and its gradient all-reduce",
                                          at_least=DEFAULT_HANG_TIMEOUT_SECONDS)
                first_step = False
            else:
                self.watchdog.waiting_for(step + 1, "the training step and its gradient "
                                          "all-reduce")
            loss, accuracy = trainer.step(batches)
            step += 1
            # Horovod: rank 0 keeps the step at once when it is asked to stop (see stop).
            if self.stop_request.signal_number and self.saved_on_request is None and is_chief:
                self.save_on_request(step)
            interval_losses.append(loss)
            interval_accuracies.append(accuracy)
            if elastic_state is not None and step % config.commit_every_steps == 0:
                # Horovod: keep this step in memory; raises when workers changed.
                elastic_state.commit()
            if step % config.log_frequency and step % config.checkpoint_every_steps and (
                    step < config.max_steps):
                continue
            # Horovod: losses and accuracies are averaged over ranks, so all ranks see one
            # number; a stop request (SIGINT or SIGTERM) on any rank makes its share non-zero
            # on all.
            self.watchdog.waiting_for(step, "the all-reduce of the logged loss")
            received = self.stop_request.signal_number
            mean_loss, mean_accuracy, interrupted, terminated = (float(v) for v in hvd.allreduce(
                tf.stack([tf.reduce_mean(interval_losses), tf.reduce_mean(interval_accuracies),
                          float(received == signal.SIGINT), float(received == signal.SIGTERM)]),
                op=hvd.Average, name="interval_metrics"))
            stop_signal = (signal.SIGINT if interrupted else
                           signal.SIGTERM if terminated else 0)
            check_loss(mean_loss, running_loss, step, trainer)
            running_loss = (mean_loss if running_loss is None
                            else 0.9 * running_loss + 0.1 * mean_loss)
            elapsed = time.perf_counter() - interval_start
            values = {"loss": mean_loss, "accuracy": mean_accuracy,
                      # the rate of the update that made this step
                      "learning_rate": float(trainer.schedule(step - 1)),
                      "examples_per_sec": global_batch * len(interval_losses) / elapsed,
                      "sec_per_batch": elapsed / len(interval_losses)}
            # Horovod: rank 0 writes the log, and every rank stops when it could not.
            fail_together(lambda: self.write_log(step, values) if is_chief else None)
            if stop_signal:
                self.stop(step, stop_signal)
            if step % config.checkpoint_every_steps == 0:
                self.save_checkpoint(step)
            interval_losses, interval_accuracies = [], []
            interval_start = time.perf_counter()
        return step

    def write_log(self, step, values):
        self.log.step(step, values)
        if self.config.summary_histograms:
            write_histograms(self.trainer.model, self.trainer.last_images, self.log.writer,
                             step)

    def save_after_lost_peers(self):
        """Rank 0, stopping on a signal when the other ranks went first (a launcher that
        ended them at once, as mpirun does on a second Ctrl-C): the step that failed changed
        no weight, so the last completed one is still every rank's, and rank 0 writes it."""
        # Horovod: rank 0 alone writes.
        if hvd.rank() != 0 or not self.stop_request.signal_number or self.log is None:
            return
        if self.saved_on_request is not None:
            return
        self.save_on_request(int(self.trainer.global_step.numpy()), stopping=True)

    def save_on_request(self, step, stopping=False):
        """Rank 0, on its own stop request: write the step just completed at once, before the
        ranks agree to stop at the next log step. A launcher that kills its ranks soon after
        passing a signal on (Open MPI's odls_base_sigkill_timeout) then still leaves this
        checkpoint. Every rank holds these same weights, so no other rank takes part."""
        self.saved_on_request = step
        name = signal.Signals(self.stop_request.signal_number).name
        try:
            self.write_checkpoint(step)
        except UserError as error:  # said by every rank when the ranks stop together
            self.log.line(f"hvd_cifar: {name}: {error}")
            self.saved_on_request = -1
            return
        # Nothing else is written to the train_dir but the closing log lines, and the launcher
        # may end this process at any moment now: the next run may have the folder.
        self.release_train_dir()
        self.log.line(f"hvd_cifar: {name} received: checkpoint of step {step} written; "
                      + ("the other ranks are gone" if stopping
                         else "stopping at the next log step"))

    def stop(self, step, signal_number):
        # Horovod: the run stops at the step rank 0 wrote on its own request, when it did:
        # saving again here could be cut short by the launcher's kill.
        # (Every rank knows last_checkpoint_step, so all or none take part in the broadcast.)
        if self.last_checkpoint_step != step:
            saved = self.saved_on_request if (self.saved_on_request or 0) > 0 else step
            step = int(hvd.broadcast_object(saved, root_rank=0))
        self.save_checkpoint(step)
        # Horovod: nobody exits before rank 0's checkpoint is complete, since the launcher
        # kills the remaining ranks as soon as one has exited.
        hvd.allreduce(tf.constant(0.0), name="checkpoint_written")
        self.watchdog.idle()
        if hvd.rank() == 0:  # Horovod:
            passed_on = (" (launchers pass Ctrl-C on to their ranks as SIGTERM)"
                         if signal_number == signal.SIGTERM and hvd.size() > 1 else "")
            self.log.line(f"hvd_cifar: stopped by {signal.Signals(signal_number).name} at step "
                          f"{step}; checkpoint written, run the same command again to resume"
                          + passed_on)
            self.log.close()
        raise Stopped(signal_number)

    def finish(self, step):
        self.save_checkpoint(step)
        self.watchdog.waiting_for(step, "the last check of the weights")
        # Horovod: a last check that synchronous SGD kept every rank's weights identical.
        digests = hvd.allgather_object(weights_digest(self.trainer.model.trainable_variables))
        if hvd.rank() == 0:  # Horovod:
            self.log.line(f"hvd_cifar: finished at step {step}; weights sha256 by rank: " +
                          " ".join(f"{r}={d}" for r, d in enumerate(digests)))
            if len(set(digests)) > 1:
                raise UserError("the ranks' weights differ after training: gradients were not "
                                "averaged identically")
            self.log.close()
        self.watchdog.idle()


# ---------------------------------------------------------------------------------------------
# Logging

class Log:
    """Rank 0's output: the tutorial's log line on stdout and in train_dir/train.log, a progress
    bar instead on a terminal, and TensorBoard scalars."""

    def __init__(self, train_dir, max_steps):
        self.train_dir = train_dir
        self.file = open(os.path.join(train_dir, "train.log"), "a")
        self.writer = tf.summary.create_file_writer(train_dir)
        # A bar only for a person at a terminal: mpirun also hands its ranks a pty, but there
        # the bar would be cut into prefixed pieces, so launched ranks print plain lines.
        launched = "OMPI_COMM_WORLD_RANK" in os.environ or "HOROVOD_RANK" in os.environ
        self.progress = (tf.keras.utils.Progbar(max_steps)
                         if sys.stdout.isatty() and not launched else None)

    def line(self, text, to_stdout=True):
        try:
            self.file.write(text + "\n")
            self.file.flush()
        except OSError as error:
            raise UserError(f"cannot write {self.file.name}: {error.strerror}") from None
        if to_stdout:
            try:
                say(text)
            except OSError:  # the launcher that read our output is gone; the file has it
                pass

    def step(self, step, values):
        text = ("%s: step %d, loss = %.2f (%.1f examples/sec; %.3f sec/batch)"
                % (datetime.datetime.now(), step, values["loss"], values["examples_per_sec"],
                   values["sec_per_batch"]))
        self.line(text, to_stdout=self.progress is None)
        if self.progress is not None:
            # Keras ends the bar with a newline when step reaches max_steps.
            self.progress.update(step, [("loss", values["loss"]),
                                        ("accuracy", values["accuracy"])])
        try:
            with self.writer.as_default(step=step):
                for name, value in values.items():
                    tf.summary.scalar(name, value)
        except tf.errors.OpError as error:
            raise UserError(f"cannot write the TensorBoard events in {self.train_dir}: "
                            f"{first_line(error)}") from None

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

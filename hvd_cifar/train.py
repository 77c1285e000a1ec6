"""Train the CIFAR-10 tutorial CNN data-parallel with Horovod (cifar10_train.py, distributed).

    horovodrun -np 4 python -m hvd_cifar.train --data_dir data --train_dir runs/train
    python -m hvd_cifar.train --synthetic --max_steps 100      (one worker, no data)

Every rank pins one GPU (or a share of the CPU cores), builds the same network (a Replica),
reads its own shard and averages gradients with the others through hvd.DistributedOptimizer.
Rank 0 alone writes, through a RunOutput (output.py). Read from train() down: set up, then the
Trainer's run: input, restore, loop, finish. Distributed lines are marked `# Horovod:`.
"""
if __name__ == "__main__":  # a command: TensorFlow's C++ lines begin at its import
    from hvd_cifar.native_logs import quiet_native_logs
    quiet_native_logs()

import dataclasses
import os
import platform
import signal
import socket
import time

import numpy as np
import tensorflow as tf
import horovod
import horovod.tensorflow as hvd

from hvd_cifar.command import (DEFAULT_TRAIN_DIR, DeterminismFlags, RankFailure, Stopped,
                               TimelineFlags, UserError, count, flag, non_negative_float,
                               parse_command, positive_int, run_command, seed_int)
from hvd_cifar.data import download, records
from hvd_cifar.collectives import barrier, fail_together, lost_peer_reason
from hvd_cifar.elastic import ElasticState
from hvd_cifar.rank_setup import (controller_name, determinism_words, op_determinism_enabled,
                                  start_like_training, xla_compiles)
from hvd_cifar.supervision import LauncherAndMakeWatch, StopRequest, Watchdog
from hvd_cifar import train_dir as train_dir_lib
from hvd_cifar.output import RunOutput
from hvd_cifar.rank_input import (TimedBatches, augmentation_place, ready_data_and_count_steps,
                                  rank_batches)
from hvd_cifar.replica import (Replica, StepConfig, check_loss, choose_optimizer, optimizer_record,
                               weights_digest)

# Longer than anything a healthy rank waits for between two marks of the watchdog: a
# checkpoint on a slow shared file system, the first step's tracing or XLA compilation, a long
# log interval on a slow device. A hung collective otherwise waits forever.
DEFAULT_HANG_TIMEOUT_SECONDS = 600.0


@dataclasses.dataclass
class TrainConfig(StepConfig, TimelineFlags, DeterminismFlags, download.DataSourceFlags):
    """The train command's flags: the step's (StepConfig), the data's and the loop's."""
    train_dir: str = flag(DEFAULT_TRAIN_DIR, "checkpoints, TensorBoard events and train.log "
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
    hang_timeout_secs: float = flag(DEFAULT_HANG_TIMEOUT_SECONDS, "end the job when a rank has "
                                    "waited this long for a step, its all-reduce or a checkpoint "
                                    "(another rank hangs); 0 never does", non_negative_float)
    first_step_timeout_secs: float = flag(DEFAULT_HANG_TIMEOUT_SECONDS, "the same for the first "
                                          "step, which every rank traces and compiles, and "
                                          "which waits for ranks that never joined; 0 never "
                                          "ends it", non_negative_float)
    summary_histograms: bool = flag(False, "also write the tutorial's activation histograms "
                                    "and sparsity at every log step")
    elastic: bool = flag(False, "keep training while workers leave or join: run under "
                         "horovodrun --min-np/--max-np --host-discovery-script (Gloo)")
    commit_every_steps: int = flag(10, "with --elastic, keep the state in memory every this "
                                   "many steps; a failing worker costs at most these steps",
                                   positive_int)


def train(config):
    if config.elastic and os.environ.get("HOROVOD_ELASTIC") != "1":
        raise UserError("--elastic needs an elastic launch: horovodrun --min-np N --max-np M "
                        "--host-discovery-script SCRIPT (see launch/elastic.sh)")
    # Horovod: start the controller, learn this process's place, pin one GPU (or cores).
    device, _, _ = start_like_training(config)
    # Python, NumPy and TensorFlow: Keras initializers without a seed draw one from Python.
    tf.keras.utils.set_random_seed(config.seed)
    # Horovod: the rate and the optimizer follow the number of workers.
    trainer = Trainer(choose_optimizer(config, hvd.size(), config.elastic), device)
    try:
        if config.elastic:
            # Horovod: an elastic job keeps its state in host memory, committed every
            # commit_every_steps, and calls run again (synced) after every change of workers.
            hvd.elastic.run(trainer.run)(ElasticState(trainer.replica.state_variables()))
        else:
            trainer.run()
    finally:
        trainer.output.release()


class Trainer:
    """The training loop of one rank: input, restore, steps, log, checkpoints, stop, finish."""

    def __init__(self, config, device):
        self.config, self.device = config, device
        # The schedule is set once the input's epoch is known, by run (again on every resize).
        self.replica = Replica(config)
        self.output = RunOutput(config)  # used by rank 0 alone
        self.stop_request = StopRequest()
        # Horovod: signalling horovodrun itself stops every rank, like signalling the ranks.
        self.launcher_watch = LauncherAndMakeWatch(self.stop_request)
        self.watchdog = Watchdog(config.hang_timeout_secs, hvd.rank(), socket.gethostname())
        self.watchdog.on_hang = self.output.release
        # saved_on_request: the step rank 0 wrote when a stop was requested.
        self.last_checkpoint_step = self.saved_on_request = None

    def run(self, elastic_state=None):
        config, replica = self.config, self.replica
        rank, size = hvd.rank(), hvd.size()  # Horovod: this process's place in the job
        self.is_chief = rank == 0  # Horovod: rank 0 alone writes, through self.output.
        # Horovod: a job of one process stops on a signal at once; a second Ctrl-C ends it.
        self.alone = size == 1 and elastic_state is None
        self.stop_request.second_interrupt_ends_process = self.alone
        # Horovod: in an elastic job the workers (so the shards and rate) are known only now.
        train_files, steps_per_epoch = ready_data_and_count_steps(config, size, hvd.local_rank())
        replica.rescale(size, steps_per_epoch, end_step=config.max_steps)
        restored = None
        if elastic_state is None or not elastic_state.set_up:
            # Horovod: rank 0 claims the train_dir and restores...
            restored = fail_together(lambda: self.output.claim_and_restore(replica.checkpoint)
                                     if self.is_chief else None)
            # Horovod: ...and every rank starts from rank 0's initial (or restored) state.
            hvd.broadcast_variables(replica.state_variables(), root_rank=0)
            if restored is not None:
                self.last_checkpoint_step = int(replica.global_step.numpy())
        if elastic_state is not None:
            elastic_state.set_up = True
            elastic_state.commit()
        step = int(replica.global_step.numpy())
        self.note_resume_point()
        batches = TimedBatches(rank_batches(config, train_files, size, rank, step))
        replica.feed_from(batches)
        # Horovod: collect each rank's device and host so rank 0 can show the whole job in one
        # line and record it.
        devices = hvd.allgather_object(self.device)
        hosts = hvd.allgather_object(socket.gethostname())
        # Horovod: the job's shape, for rank 0's first line.
        job = (f"{count(size, 'rank')} ({hvd.local_size()} on this host), "
               f"{controller_name()} "
               f"controller{' (elastic)' if elastic_state is not None else ''}, devices: "
               + ", ".join(f"{r}={d}" for r, d in enumerate(devices))
               + f"; {determinism_words(xla_compiles(config.xla))}")
        # Horovod: one update averages the passes of every rank.
        global_batch = config.batch_size * size * config.backward_passes_per_step
        record = {"ranks": size, "controller": controller_name(),  # Horovod: MPI or Gloo
                  "global_batch": global_batch, "lr_rule": replica.lr_rule,
                  "steps_per_epoch": replica.steps_per_epoch, **optimizer_record(config),
                  "use_fp16": config.use_fp16, "augment_on": augmentation_place(config),
                  "synthetic": config.synthetic, "seed": config.seed,
                  "devices": devices, "deterministic": op_determinism_enabled()}
        if self.is_chief:  # only rank 0 writes the record: only it reads the files again
            record["data_fingerprint"] = (None if train_files is None
                                          else records.fingerprint(train_files[0]))
            record.update(train_dir_lib.provenance(config, hosts, {
                "python": platform.python_version(), "tensorflow": tf.__version__,
                "horovod": horovod.__version__, "numpy": np.__version__,
                "mpi": train_dir_lib.mpi_version()}))
        # Horovod: rank 0 opens the log and says how the run is set up.
        fail_together(lambda: self.open_output(job, record, step, restored)
                      if self.is_chief else None)
        try:
            step = self.loop(step, batches, global_batch, elastic_state)
        except tf.errors.OpError as error:
            reason = lost_peer_reason(error)
            if elastic_state is not None or reason is None:
                raise  # Horovod: an elastic job recovers from it
            self.save_after_lost_peers()
            raise RankFailure(
                f"rank {rank} on {socket.gethostname()} lost the other ranks at step "
                f"{int(replica.global_step.numpy()) + 1} ({reason})"
                f"{self.watchdog.resume_hint}") from None
        self.finish(step)

    def open_output(self, job, record, step, restored):
        """Rank 0's opening lines, run.json, and a warning when the disk is too small."""
        self.output.open(self.replica, job, record, step, restored)
        self.output.record_run(record)
        self.output.warn_when_checkpoints_do_not_fit(
            sum(v.numpy().nbytes for v in self.replica.state_variables()))

    def note_resume_point(self):
        step = self.last_checkpoint_step
        self.watchdog.resume_hint = (f"; rerun the same command to resume from step {step}"
                                     if step is not None else "; no checkpoint was written yet")

    def loop(self, step, batches, global_batch, elastic_state):
        """Train from step to max_steps; the step reached."""
        config, replica = self.config, self.replica
        interval_losses, interval_accuracies, running_loss = [], [], None
        interval_start = time.perf_counter()
        # Tracing (and compiling) the first step takes every rank long: not a hang.
        self.watchdog.waiting_for(step + 1, "the first training step (traced and compiled) and "
                                  "its gradient all-reduce",
                                  timeout=config.first_step_timeout_secs,
                                  flag_name="--first_step_timeout_secs")
        while step < config.max_steps:
            loss, accuracy = replica.step(batches)
            step += 1
            if self.stop_request.signal_number and self.alone:
                # Horovod: no other rank must agree, so a job of one stops after this step.
                self.stop(step, self.stop_request.signal_number)
            # Horovod: rank 0 keeps the step at once when it is asked to stop (see stop).
            if self.stop_request.signal_number and self.saved_on_request is None and \
                    self.is_chief:
                self.save_on_request(step)
            interval_losses.append(loss)
            interval_accuracies.append(accuracy)
            if elastic_state is not None and step % config.commit_every_steps == 0:
                # Horovod: keep this step in memory; raises when workers changed.
                elastic_state.commit()
            if step % config.log_frequency and step % config.checkpoint_every_steps and (
                    step < config.max_steps):
                self.watchdog.waiting_for(step + 1, "the training step and its gradient "
                                          "all-reduce")
                continue
            self.watchdog.waiting_for(step, "the all-reduce of the logged loss")
            received = self.stop_request.signal_number
            elapsed = time.perf_counter() - interval_start
            # Horovod: loss, accuracy and input wait are averaged over ranks, so all see one
            # number; a stop request (SIGINT or SIGTERM) on any rank makes its share non-zero.
            mean_loss, mean_accuracy, input_wait, interrupted, terminated = (
                float(v) for v in hvd.allreduce(tf.stack(
                    [tf.reduce_mean(interval_losses), tf.reduce_mean(interval_accuracies),
                     batches.take_wait() / elapsed, float(received == signal.SIGINT),
                     float(received == signal.SIGTERM)]), op=hvd.Average, name="interval_metrics"))
            check_loss(mean_loss, running_loss, step, replica)
            running_loss = (mean_loss if running_loss is None
                            else 0.9 * running_loss + 0.1 * mean_loss)
            values = {"loss": mean_loss, "accuracy": mean_accuracy, "input_wait_share": input_wait,
                      # the rate of the update that made this step
                      "learning_rate": float(replica.schedule(step - 1)),
                      "examples_per_sec": global_batch * len(interval_losses) / elapsed,
                      "sec_per_batch": elapsed / len(interval_losses)}
            # Horovod: rank 0 writes the log, and every rank stops when it could not.
            fail_together(lambda: self.output.write_step(
                step, values, replica.model,
                replica.batch_of(batches.last)[0] if config.summary_histograms else None)
                if self.is_chief else None)
            if interrupted or terminated:
                self.stop(step, signal.SIGINT if interrupted else signal.SIGTERM)
            if step % config.checkpoint_every_steps == 0:
                self.save_checkpoint(step)
            interval_losses, interval_accuracies = [], []
            interval_start = time.perf_counter()
            self.watchdog.waiting_for(step + 1, "the training step and its gradient all-reduce")
        return step

    def save_checkpoint(self, step):
        self.watchdog.waiting_for(step, "the checkpoint of this step")
        # Horovod: rank 0 alone writes, and every rank stops when it could not.
        fail_together(lambda: self.output.write_checkpoint(step) if self.is_chief else None)
        self.last_checkpoint_step = step
        self.note_resume_point()

    def save_on_request(self, step, peers_gone=False):
        """Rank 0, on its own stop request: write the step just completed at once, before the
        ranks agree to stop at the next log step. A launcher that kills its ranks soon after
        passing a signal on (Open MPI's odls_base_sigkill_timeout) then still leaves this
        checkpoint. Every rank holds these same weights, so no other rank takes part."""
        self.saved_on_request = step
        name = signal.Signals(self.stop_request.signal_number).name
        try:
            self.output.write_checkpoint(step)
        except UserError as error:  # said by every rank when the ranks stop together
            self.output.line(f"hvd_cifar: {name}: {error}")
            self.saved_on_request = -1
            return
        # Only closing log lines follow, and the launcher may end this process at any moment
        # now: the next run may have the folder.
        self.output.release()
        self.output.line(f"hvd_cifar: {name} received: checkpoint of step {step} written; "
                         + ("the other ranks are gone" if peers_gone
                            else "stopping at the next log step"))

    def save_after_lost_peers(self):
        """Rank 0, stopping on a signal when the other ranks went first (a launcher that ended
        them at once, as mpirun does on a second Ctrl-C): the step that failed changed no
        weight, so the last completed one is still every rank's, and rank 0 writes it."""
        if (self.is_chief and self.stop_request.signal_number and self.output.log is not None
                and self.saved_on_request is None):
            self.save_on_request(int(self.replica.global_step.numpy()), peers_gone=True)

    def stop(self, step, signal_number):
        # Horovod: the run stops at the step rank 0 wrote on its own request, when it did:
        # saving again here could be cut short by the launcher's kill.
        # (Every rank knows last_checkpoint_step, so all or none take part in the broadcast.)
        if self.last_checkpoint_step != step:
            saved = self.saved_on_request if (self.saved_on_request or 0) > 0 else step
            step = int(hvd.broadcast_object(saved, root_rank=0))  # Horovod: rank 0's step
        self.save_checkpoint(step)
        # Horovod: nobody exits before rank 0's checkpoint is complete, since the launcher
        # kills the remaining ranks as soon as one has exited.
        barrier("checkpoint_written")
        self.watchdog.idle()
        if self.is_chief:
            # Horovod: a launcher passes Ctrl-C on as SIGTERM.
            passed_on = (" (launchers pass Ctrl-C on to their ranks as SIGTERM)"
                         if signal_number == signal.SIGTERM and hvd.size() > 1 else "")
            self.output.line(f"hvd_cifar: stopped by {signal.Signals(signal_number).name} at "
                             f"step {step}; checkpoint written, run the same command again to "
                             "resume" + passed_on)
            self.output.close()
        raise Stopped(signal_number)

    def finish(self, step):
        self.save_checkpoint(step)
        self.watchdog.waiting_for(step, "the last check of the weights")
        # Horovod: a last check that synchronous SGD kept every rank's weights identical.
        digests = hvd.allgather_object(weights_digest(self.replica.model.trainable_variables))
        if self.is_chief:
            self.output.line(f"hvd_cifar: finished at step {step}; weights sha256 by rank: " +
                             " ".join(f"{r}={d}" for r, d in enumerate(digests)))
            self.output.record_finish(step, digests[0])
            if len(set(digests)) > 1:
                raise UserError("the ranks' weights differ after training: gradients were not "
                                "averaged identically")
            self.output.close()
        self.watchdog.idle()


def main(argv=None):
    config = parse_command(TrainConfig, "python -m hvd_cifar.train",
                           "Train the CIFAR-10 tutorial CNN with Horovod (one process per GPU "
                           "or CPU share, under horovodrun, mpirun or srun; alone it is a "
                           "one-worker job).", argv)
    run_command(lambda: train(config))


if __name__ == "__main__":
    main()

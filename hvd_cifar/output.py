"""What rank 0 writes of a training run, all in its train_dir: the lock that claims it, the restore
of its newest checkpoint, the log (stdout and train.log), TensorBoard events, run.json and the
checkpoints. One object, RunOutput; the training loop calls it and never writes itself.
No Horovod here: the loop decides which rank owns the output.
"""
import datetime
import os
import shutil
import sys
import time

import tensorflow as tf

from hvd_cifar import checkpoint as checkpoint_lib, plan, policy, train_dir as train_dir_lib
from hvd_cifar.command import UserError, count, first_line, say


class RunOutput:
    """Rank 0's side of one training run in config.train_dir."""

    def __init__(self, config):
        self.config = config
        self.train_dir = config.train_dir
        self.lock = None
        self.log = self.checkpoints = None
        self.notes = []           # lines about the train_dir, said once the log is open
        self.previous_run = None  # run.json of the run before this one in the train_dir
        self.checkpoint_size = 0  # bytes of one checkpoint, once known

    def claim_and_restore(self, checkpoint):
        """Lock the train_dir, clean what a killed run left, restore its newest complete
        checkpoint into checkpoint; the checkpoint's path or None."""
        config = self.config
        created = train_dir_lib.create_or_move_aside(self.train_dir, config.fresh,
                                                     config.take_over_train_dir)
        try:
            self.lock = train_dir_lib.TrainDirLock(self.train_dir, config.take_over_train_dir)
        except UserError:
            if created:  # a run that could not start leaves nothing behind
                shutil.rmtree(self.train_dir, ignore_errors=True)
            raise
        self.notes += self.lock.notes
        for leftover in train_dir_lib.remove_unfinished_checkpoints(self.train_dir):
            self.notes.append(f"removed {leftover}, a checkpoint a stopped run did not finish")
        self.previous_run = train_dir_lib.read_run_record(self.train_dir)
        previous_optimizer = (self.previous_run or {}).get("optimizer", "sgd")
        if self.previous_run and previous_optimizer != config.optimizer:
            # The optimizers keep different state: one's checkpoint would mislead the other.
            raise UserError(f"--train_dir {self.train_dir} was trained with --optimizer "
                            f"{previous_optimizer}: resume it with --optimizer "
                            f"{previous_optimizer}, or start over with --fresh")
        restored, notes = checkpoint_lib.restore_newest(checkpoint, self.train_dir,
                                                        use_fp16=config.use_fp16)
        self.notes += notes
        return restored

    def release(self):
        """Free the train_dir for the next run (nothing but closing log lines follows)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def open(self, replica, job, record, step, restored):
        """The log, TensorBoard writer and checkpoint manager (once), then the run's opening
        lines: job (how the ranks are placed), the batch and rate, the notes, where it starts."""
        config = self.config
        if self.log is None:
            self.log = Log(self.train_dir, config.max_steps)
            self.checkpoints = checkpoint_lib.manager(replica.checkpoint, self.train_dir,
                                                      config.keep_checkpoints)
        self.log.warmup_steps = replica.warmup_steps
        self.line(f"hvd_cifar: {job}")
        self.line(f"hvd_cifar: global batch {record['global_batch']} "
                  f"({config.batch_size} x {count(record['ranks'], 'rank')} x "
                  f"{count(config.backward_passes_per_step, 'pass', 'passes')}), "
                  f"{record['steps_per_epoch']} steps an epoch, learning rate "
                  f"{replica.schedule.peak_lr:.4g} ({replica.lr_rule}), warm-up "
                  f"{replica.warmup_steps} steps"
                  + (f", distortions on the {record['augment_on']}" if record.get("augment_on")
                     else ""))
        self.line(f"hvd_cifar: optimizer: {replica.optimizer_rule}")
        if not config.synthetic:
            self.line(f"hvd_cifar: {plan.expected_images_line(record['global_batch'])}")
        workers = record["global_batch"] // config.batch_size
        measured_setting = policy.settings_differing(config, workers)
        if measured_setting:
            self.line(f"hvd_cifar: note: the defaults follow the {count(workers, 'worker')}, as "
                      f"measured at {policy.TUTORIAL_BATCH} a worker; the setting measured for "
                      f"global batch {record['global_batch']} is {measured_setting}")
        self.line("hvd_cifar: a rank that waits longer than "
                  + (f"{config.hang_timeout_secs:g} s" if config.hang_timeout_secs else "ever")
                  + " for a step, its all-reduce or a checkpoint ends the job "
                  "(--hang_timeout_secs); for the first step, which waits for every rank to "
                  "join and compile, "
                  + (f"{config.first_step_timeout_secs:g} s" if config.first_step_timeout_secs
                     else "never")
                  + " (--first_step_timeout_secs)")
        for note in self.notes:
            self.line(f"hvd_cifar: {note}")
        self.notes = []
        if restored:
            self.line(f"hvd_cifar: resuming from {restored} at step {step}")
            changed = train_dir_lib.changes(self.previous_run, record)
            if changed:
                self.line("hvd_cifar: resuming with changes: " + ", ".join(changed))
            if step >= config.max_steps:
                self.line(f"hvd_cifar: already at step {step}, at or past --max_steps "
                          f"{config.max_steps}: nothing to train (raise --max_steps to go on)")
        else:
            self.line(f"hvd_cifar: {'continuing' if step else 'starting'} at step {step} in "
                      f"{self.train_dir}")

    def record_run(self, record):
        """run.json: this run's set-up and provenance, the earlier set-ups of a resumed run."""
        train_dir_lib.write_run_record(self.train_dir,
                                       train_dir_lib.with_history(record, self.previous_run))

    def record_finish(self, step, digest):
        """run.json gains when the run finished, at which step and its weights' digest."""
        record = train_dir_lib.read_run_record(self.train_dir) or {}
        record.update(finished=datetime.datetime.now().isoformat(timespec="seconds"),
                      finished_step=step, weights_digest=digest)
        train_dir_lib.write_run_record(self.train_dir, record)

    def warn_when_checkpoints_do_not_fit(self, size):
        """Say so when the disk cannot hold the checkpoints of size bytes the run keeps (plus
        the one being written)."""
        config = self.config
        self.checkpoint_size = size
        needed = size * (config.keep_checkpoints + 1)
        free = train_dir_lib.free_bytes(self.train_dir)
        if free < needed:
            self.line(f"hvd_cifar: warning: --train_dir {self.train_dir} has "
                      f"{free / 1e6:.1f} MB free; keeping {config.keep_checkpoints} "
                      f"checkpoints of {size / 1e6:.1f} MB needs {needed / 1e6:.1f} MB "
                      "(one more while a new one is written)")

    def line(self, text):
        self.log.line(text)

    def write_step(self, step, values, model=None, images=None):
        """The log line and scalars of step; with --summary_histograms, the activation
        histograms of model on images (the batch it just trained on)."""
        self.log.step(step, values)
        if self.config.summary_histograms:
            write_histograms(model, images, self.log.writer, step)

    def write_checkpoint(self, step):
        """Checkpoint step (once); a failure removes the partial one and names the room."""
        newest = self.checkpoints.latest_checkpoint
        if newest == os.path.join(self.train_dir, f"{checkpoint_lib.CHECKPOINT_PREFIX}-{step}"):
            return
        try:
            self.checkpoints.save(checkpoint_number=step)
        except (tf.errors.OpError, OSError) as error:
            train_dir_lib.remove_unfinished_checkpoints(self.train_dir)
            raise UserError(
                f"cannot write checkpoint {step} to --train_dir {self.train_dir}: "
                f"{first_line(error)[:300]}; "
                f"a checkpoint needs {self.checkpoint_size / 1e6:.1f} MB, "
                f"{train_dir_lib.free_bytes(self.train_dir) / 1e6:.1f} MB are free; the newest "
                f"complete checkpoint is {newest}") from None

    def close(self):
        if self.log is not None:
            self.log.close()


class Log:
    """The tutorial's log line on stdout and in train_dir/train.log, a progress bar instead on a
    terminal, and TensorBoard scalars."""

    def __init__(self, train_dir, max_steps):
        self.train_dir, self.max_steps = train_dir, max_steps
        self.started = time.monotonic()  # of this process's training: resumes count anew
        self.warmup_steps = 0
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
        # The time left is the steps left at this interval's rate: the recent one, not the
        # average since the start, which holds the first step's tracing.
        left = (self.max_steps - step) * values["sec_per_batch"]
        values = {**values, "progress": step / self.max_steps, "seconds_left": left}
        text = ("%s: step %d, loss = %.2f (%.1f examples/sec; %.3f sec/batch; %.0f%% waiting "
                "for input) [%d of %d, %.0f%%, %s in, about %s left%s]" % (
                    datetime.datetime.now(), step, values["loss"], values["examples_per_sec"],
                    values["sec_per_batch"], 100 * values["input_wait_share"], step,
                    self.max_steps, 100 * values["progress"],
                    duration(time.monotonic() - self.started), duration(left),
                    f"; warm-up to step {self.warmup_steps}" if step < self.warmup_steps
                    else ""))
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


def duration(seconds):
    """3 s, 4 min 05 s, 2 h 07 min: as a person reads a time left."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


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

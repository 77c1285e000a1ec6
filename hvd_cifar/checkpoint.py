"""The training checkpoint: its layout, restoring it with one-line errors, and the network of
its moving averages that evaluation, prediction and export read (as cifar10_eval.py restores the
shadow variables in place of the trained ones). Nothing here knows about Horovod.

A checkpoint is TensorFlow's object checkpoint `ckpt-<step>` in the train_dir, written by
tf.train.CheckpointManager, holding:
    model            the network's variables
    optimizer        the optimizer's slots and iteration count (absent for readers)
    moving_averages  the exponential moving averages of the trainable variables
    global_step      synchronized updates made
"""
import tensorflow as tf

from hvd_cifar import model as model_lib
from hvd_cifar.config import UserError, first_line

CHECKPOINT_PREFIX = "ckpt"
# What TensorFlow raises for a checkpoint that is truncated, corrupt or of another model.
CHECKPOINT_ERRORS = (ValueError, AssertionError, IndexError, tf.errors.OpError)


def layout(model, moving_averages, global_step, optimizer=None):
    """The checkpoint of these objects under their names; readers leave the optimizer out."""
    objects = dict(model=model, moving_averages=moving_averages, global_step=global_step)
    if optimizer is not None:
        objects["optimizer"] = optimizer
    return tf.train.Checkpoint(**objects)


def manager(checkpoint, train_dir, keep):
    """Writes ckpt-<step> into train_dir (through a ckpt-<step>_temp folder, the index last) and
    keeps the newest `keep`."""
    return tf.train.CheckpointManager(checkpoint, train_dir, max_to_keep=keep,
                                      checkpoint_name=CHECKPOINT_PREFIX)


def written_with_loss_scaling(path):
    """Whether the checkpoint holds a float16 run's loss scale (--use_fp16)."""
    try:
        return any("loss_scale" in name for name, _ in tf.train.list_variables(path))
    except CHECKPOINT_ERRORS:
        return None


def restore(checkpoint, path, partial=False, use_fp16=None):
    """checkpoint.restore(path), every object of ours matched, or a UserError naming path (and
    --use_fp16 when the checkpoint was written with the other precision)."""
    try:
        status = checkpoint.restore(path)
        (status.expect_partial() if partial else status).assert_existing_objects_matched()
    except CHECKPOINT_ERRORS as error:
        written_fp16 = written_with_loss_scaling(path)
        if use_fp16 is not None and written_fp16 is not None and written_fp16 != use_fp16:
            raise UserError(f"checkpoint {path} was written with"
                            f"{'' if written_fp16 else 'out'} --use_fp16: "
                            f"{'pass' if written_fp16 else 'drop'} --use_fp16 to resume it, or "
                            "start over with --fresh") from None
        raise UserError(f"checkpoint {path} does not fit this model or is damaged "
                        f"({first_line(error, 'unreadable')}); "
                        "use another --train_dir or --fresh") from None


def restore_latest(checkpoint, train_dir, use_fp16=None):
    """Restore the newest checkpoint of train_dir; its path, or None when there is none."""
    path = tf.train.latest_checkpoint(train_dir)
    if path is not None:
        restore(checkpoint, path, use_fp16=use_fp16)
    return path


def latest(checkpoint_dir):
    """The newest checkpoint's path, or a UserError naming the folder."""
    path = tf.train.latest_checkpoint(checkpoint_dir)
    if path is None:
        raise UserError(f"--checkpoint_dir {checkpoint_dir} holds no checkpoint")
    return path


def load_averaged_model(path):
    """The tutorial network holding the checkpoint's moving averages; (model, global_step)."""
    model = model_lib.inference()
    averages = [tf.Variable(tf.zeros_like(v)) for v in model.trainable_variables]
    global_step = tf.Variable(0, dtype=tf.int64)
    restore(layout(model, averages, global_step), path, partial=True)
    for variable, average in zip(model.trainable_variables, averages):
        variable.assign(average)
    return model, int(global_step.numpy())

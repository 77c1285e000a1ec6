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
import contextlib
import os
import re
import shutil
import tempfile

import tensorflow as tf

from hvd_cifar import model as model_lib
from hvd_cifar.command import UserError, first_line
from hvd_cifar.files import write_atomically

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


class CheckpointGone(UserError):
    """The checkpoint's files were deleted while it was read (a run keeping few checkpoints
    deletes its oldest as it writes a new one): it was complete, and a newer one exists."""


def restore(checkpoint, path, partial=False, use_fp16=None,
            remedy="use another --train_dir or --fresh"):
    """checkpoint.restore(path), every object of ours matched, or a UserError naming path (and
    --use_fp16 when the checkpoint was written with the other precision); CheckpointGone when
    its files vanished meanwhile."""
    try:
        status = checkpoint.restore(path)
        (status.expect_partial() if partial else status).assert_existing_objects_matched()
    except CHECKPOINT_ERRORS as error:
        if (damage(path) or "").endswith("is missing"):
            raise CheckpointGone(f"checkpoint {path} was deleted while it was read "
                                 "(its run keeps only the newest)") from None
        written_fp16 = written_with_loss_scaling(path)
        if use_fp16 is not None and written_fp16 is not None and written_fp16 != use_fp16:
            raise UserError(f"checkpoint {path} was written with"
                            f"{'' if written_fp16 else 'out'} --use_fp16: "
                            f"{'pass' if written_fp16 else 'drop'} --use_fp16 to resume it, or "
                            "start over with --fresh") from None
        raise UserError(f"checkpoint {path} does not fit this model or is damaged "
                        f"({first_line(error, 'unreadable')}); {remedy}") from None


# A checkpoint's files: ckpt-<step>.index, written last, and its data shards
# ckpt-<step>.data-<i>-of-<n>. The `checkpoint` state file that TensorFlow keeps beside them
# only lists them; a checkpoint is found from its own files, never from that list alone.
STATE_FILE = "checkpoint"
CHECKPOINT_FILE = re.compile(rf"^{CHECKPOINT_PREFIX}-(\d+)\.(index|data-\d+-of-(\d+))$")


def damage(path):
    """Why the checkpoint at path (ckpt-<step>) cannot be restored, or None when its index and
    every data shard are present and every tensor reads back whole (TensorFlow checks each
    tensor's checksum as it reads it)."""
    folder, name = os.path.split(path)
    if not os.path.isfile(path + ".index"):
        return f"its index {name}.index is missing"
    shard_counts = set()
    for entry in os.listdir(folder or "."):
        match = CHECKPOINT_FILE.match(entry)
        if match and entry.startswith(name + ".data-"):
            shard_counts.add(int(match.group(3)))
    expected = max(shard_counts, default=1)
    missing = [f"{name}.data-{i:05d}-of-{expected:05d}" for i in range(expected)
               if not os.path.isfile(f"{path}.data-{i:05d}-of-{expected:05d}")]
    if missing:
        return f"its data file {missing[0]} is missing"
    try:
        reader = tf.train.load_checkpoint(path)
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)
    except CHECKPOINT_ERRORS as error:
        return f"unreadable: {first_line(error, 'unreadable')[:200]}"
    return None


def checkpoint_steps(folder):
    """The steps of which folder holds any checkpoint file, oldest first."""
    try:
        entries = os.listdir(folder)
    except OSError:
        return []
    return sorted({int(m.group(1)) for m in map(CHECKPOINT_FILE.match, entries) if m})


class Found:
    """The checkpoints of a folder: `complete` paths oldest first, `damaged` (path, why)
    newest first, and `listed`, what the state file names (None when it is unreadable)."""

    def __init__(self, complete, damaged, listed):
        self.complete, self.damaged, self.listed = complete, damaged, listed

    @property
    def newest(self):
        return self.complete[-1] if self.complete else None

    def skipped_notes(self):
        """Lines about every damaged checkpoint newer than the one restored."""
        newest_step = step_of(self.newest) if self.newest else -1
        return [f"skipped {path}, newer than {self.newest} but damaged ({why})"
                for path, why in self.damaged if step_of(path) > newest_step]

    def refusal(self, flag_name, folder):
        """The one line for a folder whose checkpoints are all damaged, or None."""
        if self.complete:
            return None
        if self.damaged:
            named = "; ".join(f"checkpoint {path}: {why}" for path, why in self.damaged[:3])
            return (f"{flag_name} {folder} holds no complete checkpoint ({named}); "
                    "restore the missing files, or start over with --fresh (which keeps this "
                    "folder aside)")
        if self.listed is None:
            return (f"{flag_name} {folder}: its {STATE_FILE} file is unreadable and no "
                    "checkpoint file is there; remove it, or start over with --fresh")
        if self.listed:
            return (f"{flag_name} {folder}: its {STATE_FILE} file names "
                    f"{', '.join(os.path.basename(p) for p in self.listed[-3:])}, but no "
                    "checkpoint file is there; restore them, or start over with --fresh")
        return None


def step_of(path):
    return int(path.rsplit("-", 1)[1])


def listed_in_state_file(folder):
    """The checkpoint paths the state file lists, oldest first; [] without one and None when
    it is unreadable."""
    path = os.path.join(folder, STATE_FILE)
    if not os.path.exists(path):
        return []
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return None
    listed = re.findall(r'^all_model_checkpoint_paths:\s*"(.*)"\s*$', text, re.M)
    newest = re.findall(r'^model_checkpoint_path:\s*"(.*)"\s*$', text, re.M)
    if not listed and not newest:
        return None
    paths = [p if os.path.isabs(p) else os.path.join(folder, p) for p in listed or newest]
    return paths


# A run writing and deleting checkpoints beside the reader can delete every one it listed.
FIND_ATTEMPTS = 5


def find(folder, newest_only=False):
    """Every checkpoint of folder, judged from its files (see Found); with newest_only, those
    down to the newest complete one (reading a checkpoint back costs its size). A checkpoint
    deleted while it was judged is left out, and the folder listed again when that left no
    complete one."""
    for _ in range(FIND_ATTEMPTS):
        complete, damaged, vanished = [], [], False
        for step in reversed(checkpoint_steps(folder)):
            path = os.path.join(folder, f"{CHECKPOINT_PREFIX}-{step}")
            why = damage(path)
            if why is None:
                complete.append(path)
                if newest_only:
                    break
            elif not any(name.startswith(f"{CHECKPOINT_PREFIX}-{step}.")
                         for name in os.listdir(folder)):
                vanished = True  # deleted by its run meanwhile: not damage
            else:
                damaged.append((path, why))
        if complete or not vanished:
            break
    return Found(complete[::-1], damaged, listed_in_state_file(folder))


def write_state_file(folder, found):
    """Make the state file list exactly the complete checkpoints (relative names, as
    tf.train.CheckpointManager writes them), so the manager keeps and deletes the right ones.
    Whether it had to be rewritten."""
    names = [os.path.basename(p) for p in found.complete]
    if found.listed is not None and [os.path.basename(p) for p in found.listed] == names:
        return False
    # The manager deletes only checkpoints newer than last_preserved_timestamp: each keeps
    # its own time, so --keep_checkpoints goes on counting them.
    times = [os.stat(p + ".index").st_mtime for p in found.complete]
    text = "".join([f'model_checkpoint_path: "{names[-1]}"\n'] +
                   [f'all_model_checkpoint_paths: "{n}"\n' for n in names] +
                   [f'all_model_checkpoint_timestamps: {t!r}\n' for t in times] +
                   [f'last_preserved_timestamp: {min(times) - 1!r}\n'])
    state_path = os.path.join(folder, STATE_FILE)

    def write(partial):
        with open(partial, "w") as f:
            f.write(text)
    write_atomically(state_path, write)
    return True


def restore_newest(checkpoint, train_dir, use_fp16=None):
    """Restore the newest complete checkpoint of train_dir. Returns (its path or None, notes:
    the damaged checkpoints skipped and a rewritten state file); a UserError when train_dir
    has checkpoints but none is complete."""
    found = find(train_dir)
    refusal = found.refusal("--train_dir", train_dir)
    if refusal:
        raise UserError(refusal)
    if found.newest is None:
        return None, []
    notes = found.skipped_notes()
    if write_state_file(train_dir, found):
        notes.append(f"rewrote {os.path.join(train_dir, STATE_FILE)} to list the complete "
                     f"checkpoints ({', '.join(os.path.basename(p) for p in found.complete)})")
    restore(checkpoint, found.newest, use_fp16=use_fp16)
    return found.newest, notes


def complete_checkpoints(checkpoint_dir):
    """The complete checkpoints of checkpoint_dir, oldest first, or a UserError naming the
    folder (and the damaged ones, when it has only those)."""
    found = find(checkpoint_dir)
    refusal = found.refusal("--checkpoint_dir", checkpoint_dir)
    if refusal:
        raise UserError(refusal)
    if not found.complete:
        raise UserError(f"--checkpoint_dir {checkpoint_dir} holds no checkpoint")
    return found.complete


def newest_or_refuse(checkpoint_dir):
    """The newest complete checkpoint's path, or a UserError naming the folder."""
    return complete_checkpoints(checkpoint_dir)[-1]


@contextlib.contextmanager
def private_copy(path):
    """A copy of checkpoint path in a temporary folder, made from its files opened first: a run
    deleting them meanwhile (keeping only its newest) cannot take them from the reader, since
    an open file stays readable. Yields the copy's path; CheckpointGone when the files were
    deleted before they could be opened."""
    folder, name = os.path.split(path)
    opened = {}
    try:
        try:
            for entry in os.listdir(folder or "."):
                if CHECKPOINT_FILE.match(entry) and entry.startswith(name + "."):
                    opened[entry] = open(os.path.join(folder, entry), "rb")
        except FileNotFoundError:
            raise CheckpointGone(f"checkpoint {path} was deleted by its run before it could "
                                 "be read") from None
        if f"{name}.index" not in opened:
            raise CheckpointGone(f"checkpoint {path} was deleted by its run before it could "
                                 "be read")
        with tempfile.TemporaryDirectory(prefix="hvd_cifar-checkpoint-") as scratch:
            for entry, source in opened.items():
                with open(os.path.join(scratch, entry), "wb") as copy:
                    shutil.copyfileobj(source, copy)
            yield os.path.join(scratch, name)
    finally:
        for source in opened.values():
            source.close()


@contextlib.contextmanager
def newest_copy(checkpoint_dir, required=True):
    """(path, private_copy of it) of checkpoint_dir's newest complete checkpoint, judged on the
    copy, so a run deleting it meanwhile cannot take it away; (None, None) when there is none
    and it is not required (else a UserError naming the folder)."""
    for _ in range(FIND_ATTEMPTS):
        for step in reversed(checkpoint_steps(checkpoint_dir)):
            path = os.path.join(checkpoint_dir, f"{CHECKPOINT_PREFIX}-{step}")
            held = contextlib.ExitStack()
            try:
                copy = held.enter_context(private_copy(path))
            except CheckpointGone:
                continue
            if damage(copy) is None:
                with held:
                    yield path, copy
                return
            held.close()
        found = find(checkpoint_dir)
        if found.complete:
            continue  # one was written while the others were deleted: look again
        if found.refusal("--checkpoint_dir", checkpoint_dir):
            raise UserError(found.refusal("--checkpoint_dir", checkpoint_dir))
        if required:
            raise UserError(f"--checkpoint_dir {checkpoint_dir} holds no checkpoint")
        yield None, None
        return
    raise UserError(f"--checkpoint_dir {checkpoint_dir}: its newest checkpoint was deleted "
                    f"{FIND_ATTEMPTS} times while it was read; try again, or have its run keep "
                    "more (--keep_checkpoints)")


def load_newest_averaged_model(checkpoint_dir):
    """load_averaged_model of checkpoint_dir's newest complete checkpoint (see newest_copy);
    (model, global_step, its path)."""
    with newest_copy(checkpoint_dir) as (path, copy):
        return (*load_averaged_model(path, copy), path)


def load_averaged_model(path, copy=None):
    """The tutorial network holding the checkpoint's moving averages; (model, global_step).
    Read from copy, a private_copy of path, when given, else from a private copy made here."""
    model = model_lib.inference()
    averages = [tf.Variable(tf.zeros_like(v)) for v in model.trainable_variables]
    global_step = tf.Variable(0, dtype=tf.int64)
    with contextlib.ExitStack() as held:
        copy = copy or held.enter_context(private_copy(path))
        try:
            restore(layout(model, averages, global_step), copy, partial=True,
                    remedy="evaluate another checkpoint of it, or another --checkpoint_dir")
        except UserError as error:  # said of the checkpoint, not of its copy
            raise type(error)(str(error).replace(copy, path)) from None
    for variable, average in zip(model.trainable_variables, averages):
        variable.assign(average)
    return model, int(global_step.numpy())

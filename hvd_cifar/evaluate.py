"""Precision @ 1 of a checkpoint's moving-average weights on the test set (cifar10_eval.py).

    python -m hvd_cifar.evaluate --data_dir D --checkpoint_dir T --run_once
    horovodrun -np 2 python -m hvd_cifar.evaluate ...     (each rank a shard; counts all-reduced)

Prints `<time>: precision @ 1 = 0.xxx` and writes T/eval.json and T/confusion_matrix.png.
Without --run_once it waits for new checkpoints and evaluates each, as the tutorial's loop does.
"""
if __name__ == "__main__":  # a command: TensorFlow's C++ lines begin at its import
    from hvd_cifar.native_logs import quiet_native_logs
    quiet_native_logs()

import contextlib
import dataclasses
import datetime
import glob
import json
import os
import sys
import time

import numpy as np

import tensorflow as tf
import horovod.tensorflow as hvd

from hvd_cifar import checkpoint as checkpoint_lib
from hvd_cifar.data import download, pipeline, records
from hvd_cifar.command import (DEFAULT_DATA_DIR, DEFAULT_TRAIN_DIR, Stopped, UserError,
                               batch_size_int, flag, parse_command, positive_int, run_command, say)
from hvd_cifar.collectives import fail_together
from hvd_cifar.rank_setup import start_horovod
from hvd_cifar.supervision import StopRequest
from hvd_cifar.files import write_atomically

EVAL_BATCH_SIZE = 1000


@dataclasses.dataclass
class EvalConfig:
    data_dir: str = flag(DEFAULT_DATA_DIR, "folder holding cifar-10-batches-bin/")
    checkpoint_dir: str = flag(DEFAULT_TRAIN_DIR, "train_dir of the run to evaluate")
    eval_dir: str = flag(None, "where eval.json, the confusion matrix, the learning curve and "
                         "the TensorBoard scalars go (default: checkpoint_dir, scalars in "
                         "<checkpoint_dir>/eval); needed for a run you may only read")
    batch_size: int = flag(EVAL_BATCH_SIZE, "test examples a batch", batch_size_int)
    run_once: bool = flag(False, "evaluate the newest checkpoint once and exit")
    all_checkpoints: bool = flag(False, "evaluate every checkpoint the run kept, oldest first, "
                                 "and write the learning curve (eval_curve.json and .png)")
    eval_interval_secs: int = flag(300, "how often to look for a new checkpoint",
                                   positive_int)


def confusion_matrix(model, dataset, num_classes):
    """Counts [true class, predicted class] over every example of dataset."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    predict = tf.function(lambda images: tf.argmax(model(images, training=False), axis=1))
    for images, labels in dataset:
        np.add.at(counts, (labels.numpy(), predict(images).numpy()), 1)
    return counts


def summarize(counts, names, global_step, checkpoint_path):
    """The eval.json content for a confusion matrix."""
    total = int(counts.sum())
    correct = np.diag(counts)
    per_class_examples = counts.sum(axis=1)
    per_class_predicted = counts.sum(axis=0)
    recall = {name: float(correct[c] / per_class_examples[c]) if per_class_examples[c] else None
              for c, name in enumerate(names)}
    return {
        "precision_at_1": float(correct.sum() / total),
        "global_step": global_step,
        "num_examples": total,
        "checkpoint": checkpoint_path,
        "class_names": list(names),
        # Recall: the share of each class's examples that are classified as that class.
        "per_class_recall": recall,
        # Of the examples predicted as a class, the share that belong to it.
        "per_class_precision": {
            name: float(correct[c] / per_class_predicted[c]) if per_class_predicted[c] else None
            for c, name in enumerate(names)},
        "confusion_matrix": counts.tolist(),
    }


def write_json(path, value):
    def write(partial):
        with open(partial, "w") as f:
            json.dump(value, f, indent=1)
    write_atomically(path, write)


def plot_confusion(counts, names, title, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(7, 6))
    image = axes.imshow(counts, cmap="Blues")
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    for (true, predicted), count in np.ndenumerate(counts):
        axes.text(predicted, true, str(count), ha="center", va="center", fontsize=7,
                  color="white" if count > counts.max() / 2 else "black")
    figure.colorbar(image)
    figure.tight_layout()
    write_atomically(path, lambda partial: figure.savefig(partial, format="png", dpi=100))
    plt.close(figure)


def load_on_every_rank(path, copy=None):
    """(model, global_step) of path's moving averages on every rank (rank 0 reads copy, its
    private copy, when given); CheckpointGone on every rank when its run deleted it under any
    of them."""
    def load():
        try:
            return checkpoint_lib.load_averaged_model(path, copy)
        except checkpoint_lib.CheckpointGone:
            return None
    loaded = fail_together(load)  # Horovod: a damaged checkpoint stops every rank together.
    # Horovod: a checkpoint deleted under any rank is passed by on every rank.
    if not all(hvd.allgather_object(loaded is not None)):
        raise checkpoint_lib.CheckpointGone(f"checkpoint {path} was deleted by its run before "
                                            "it could be read")
    return loaded


def newest_on_rank_0(held, checkpoint_dir, required=True):
    """(path, rank 0's private copy or None) of the newest complete checkpoint, which rank 0
    chooses and holds in held (an ExitStack) so its run cannot delete it from under rank 0."""
    def choose():
        return held.enter_context(checkpoint_lib.newest_copy(checkpoint_dir, required))
    # Horovod: rank 0 chooses, so every rank reads the same checkpoint; a folder without one
    # stops every rank together.
    chosen = fail_together(lambda: choose() if hvd.rank() == 0 else None)
    path = hvd.broadcast_object(chosen[0] if chosen else None, root_rank=0)
    return path, chosen[1] if chosen else None


def evaluate_newest(config, test_paths, names):
    """evaluate_once on the newest complete checkpoint, taking the newest again while a run
    deletes the chosen one before the other ranks read it."""
    for _ in range(checkpoint_lib.FIND_ATTEMPTS):
        with contextlib.ExitStack() as held:
            path, copy = newest_on_rank_0(held, config.checkpoint_dir)
            try:
                return evaluate_once(config, path, test_paths, names, copy)
            except checkpoint_lib.CheckpointGone as gone:
                if hvd.rank() == 0:
                    say(f"hvd_cifar: {gone}; taking the newest again")
    raise UserError(f"--checkpoint_dir {config.checkpoint_dir}: its newest checkpoint was "
                    f"deleted {checkpoint_lib.FIND_ATTEMPTS} times before it could be read; "
                    "try again, or have its run keep more (--keep_checkpoints)")


def evaluate_once(config, checkpoint_path, test_paths, names, copy=None):
    """Evaluate one checkpoint on every rank's shard (rank 0 from copy, its private copy, when
    given); rank 0 gets the summary (others None)."""
    model, global_step = load_on_every_rank(checkpoint_path, copy)
    # Horovod: rank r evaluates records r, r + size, ...; none dropped, so shards may differ
    # in size and each rank runs its own number of batches before the single all-reduce.
    dataset = pipeline.eval_dataset(test_paths, config.batch_size, num_shards=hvd.size(),
                                shard_index=hvd.rank())
    counts = confusion_matrix(model, dataset, records.NUM_CLASSES)
    # Horovod: add up every rank's counts, so the result equals one process evaluating all.
    counts = hvd.allreduce(tf.constant(counts), op=hvd.Sum, name="confusion_matrix").numpy()
    if hvd.rank() != 0:
        return None
    # The classes that have a name, or an example or prediction: labels the class names
    # leave out are shown as `class N`.
    seen = np.flatnonzero(counts.sum(axis=0) + counts.sum(axis=1))
    used = max(len(names), int(seen.max()) + 1 if seen.size else 0)
    if used > len(names):
        say(f"hvd_cifar: warning: the class names ({len(names)}) do not cover labels "
            f"{len(names)} to {used - 1}; they are shown as 'class N'", sys.stderr)
    names, counts = records.label_names(names, used), counts[:used, :used]
    summary = summarize(counts, names, global_step, checkpoint_path)
    say(f"{datetime.datetime.now()}: precision @ 1 = {summary['precision_at_1']:.3f} "
        f"(step {global_step}, {summary['num_examples']} examples)")
    write_json(os.path.join(output_dir(config), "eval.json"), summary)
    plot_confusion(counts, names, f"step {global_step}: precision @ 1 = "
                   f"{summary['precision_at_1']:.3f}",
                   os.path.join(output_dir(config), "confusion_matrix.png"))
    return summary


def training_wall_seconds(train_dir):
    """{step: seconds of training up to it}, from the TensorBoard events' own times.

    Each start of the trainer (a resume) writes a new events file; time between runs is not
    training time, so the files' spans are added up."""
    times, earlier_runs = {}, 0.0
    for path in sorted(glob.glob(os.path.join(train_dir, "events.out.tfevents.*"))):
        start = end = None
        for event in tf.compat.v1.train.summary_iterator(path):
            start = event.wall_time if start is None else start
            end = event.wall_time
            if any(value.tag == "loss" for value in event.summary.value):
                times[event.step] = earlier_runs + event.wall_time - start
        earlier_runs += (end - start) if start is not None else 0.0
    return times


def plot_curve(curve, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.plot([c["global_step"] for c in curve], [c["precision_at_1"] for c in curve], "o-")
    axes.set_xlabel("step")
    axes.set_ylabel("precision @ 1 (moving averages)")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    write_atomically(path, lambda partial: figure.savefig(partial, format="png", dpi=100))
    plt.close(figure)


def evaluate_all(config, test_paths, names):
    """Every kept checkpoint, oldest first; rank 0 writes eval_curve.json and eval_curve.png."""
    # Horovod: rank 0 lists the checkpoints, so every rank reads the same ones.
    paths = hvd.broadcast_object(fail_together(
        lambda: checkpoint_lib.complete_checkpoints(config.checkpoint_dir)
        if hvd.rank() == 0 else None), root_rank=0)
    wall_seconds = training_wall_seconds(config.checkpoint_dir)
    curve = []
    for path in paths:
        try:
            summary = evaluate_once(config, path, test_paths, names)
        except checkpoint_lib.CheckpointGone as gone:
            if hvd.rank() == 0:
                say(f"hvd_cifar: skipped {path}: {gone}")
            continue
        if summary is not None:
            curve.append({"global_step": summary["global_step"],
                          "precision_at_1": summary["precision_at_1"],
                          "wall_seconds": wall_seconds.get(summary["global_step"])})
    if hvd.rank() == 0:
        write_json(os.path.join(output_dir(config), "eval_curve.json"), curve)
        plot_curve(curve, os.path.join(output_dir(config), "eval_curve.png"))


def output_dir(config):
    return config.eval_dir or config.checkpoint_dir


def check_output_dir(config):
    """Fail before evaluating when the results could not be written."""
    folder = output_dir(config)
    if config.eval_dir is None and not os.path.isdir(folder):
        return  # no checkpoint there either, which is said when looking for one
    try:
        os.makedirs(folder, exist_ok=True)
        writable = os.access(folder, os.W_OK)
        if writable:
            probe = os.path.join(folder, f".write-test-{os.getpid()}")
            open(probe, "w").close()
            os.remove(probe)
    except OSError:
        writable = False
    if writable:
        return
    if config.eval_dir is None:
        raise UserError(f"--checkpoint_dir {config.checkpoint_dir} is not writable (a run you "
                        "may only read): pass --eval_dir DIR for eval.json, the confusion "
                        "matrix and the TensorBoard scalars")
    raise UserError(f"--eval_dir {config.eval_dir} is not writable")


def read_test_data(data_dir):
    """(the test batch files, checked; the class names) of data_dir."""
    batches_dir = download.ensure_batches_dir(
        data_dir, fetch=False, no_fetch_reason="evaluate does not download (python -m "
        "hvd_cifar.data download does)")
    return records.split_files(batches_dir, "test")[0], records.class_names(batches_dir)


def evaluate(config):
    start_horovod()  # Horovod: alone a job of size 1; under horovodrun each rank a shard.
    # Horovod: rank 0 writes the results, and every rank stops when it could not.
    fail_together(lambda: check_output_dir(config) if hvd.rank() == 0 else None)
    # Horovod: a rank missing the data stops every rank, not only itself.
    test_paths, names = fail_together(lambda: read_test_data(config.data_dir))
    if config.all_checkpoints:
        evaluate_all(config, test_paths, names)
        return
    if config.run_once:
        evaluate_newest(config, test_paths, names)
        return
    scalars_dir = config.eval_dir or os.path.join(config.checkpoint_dir, "eval")
    writer = None
    if hvd.rank() == 0:
        writer = tf.summary.create_file_writer(scalars_dir)
        say(f"hvd_cifar: watching {config.checkpoint_dir} for new checkpoints every "
            f"{config.eval_interval_secs} s (TensorBoard scalars in {scalars_dir}); Ctrl-C "
            "stops")
    # Ctrl-C or SIGTERM ends the loop between evaluations, never inside a collective.
    stop_request = StopRequest()
    evaluated = None
    while True:
        # Horovod: rank 0 decides when to stop, so all ranks leave together.
        stop_signal = hvd.broadcast_object(stop_request.signal_number, root_rank=0)
        if stop_signal:
            raise Stopped(stop_signal)
        with contextlib.ExitStack() as held:
            path, copy = newest_on_rank_0(held, config.checkpoint_dir, required=False)
            if path and path != evaluated:
                try:
                    summary = evaluate_once(config, path, test_paths, names, copy)
                except checkpoint_lib.CheckpointGone as gone:
                    if hvd.rank() == 0:
                        say(f"hvd_cifar: {gone}; taking the newest again")
                    continue
                if writer is not None:
                    with writer.as_default(step=summary["global_step"]):
                        tf.summary.scalar("precision_at_1", summary["precision_at_1"])
                    writer.flush()
                evaluated = path
        deadline = time.monotonic() + config.eval_interval_secs
        while time.monotonic() < deadline and not stop_request.signal_number:
            time.sleep(min(1.0, config.eval_interval_secs))


def main(argv=None):
    config = parse_command(EvalConfig, "python -m hvd_cifar.evaluate",
                           "Precision @ 1 of a checkpoint's moving-average weights on the "
                           "CIFAR-10 test set.", argv)
    run_command(lambda: evaluate(config))


if __name__ == "__main__":
    main()

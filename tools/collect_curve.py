"""One learning curve from evaluations made at different times, as `evaluate --all_checkpoints`
would write it.

    python tools/collect_curve.py OUT.json TRAIN_DIR SOURCE...

A SOURCE is an eval_curve.json (`evaluate --all_checkpoints`), an eval.json (`--run_once`), or
an --eval_dir of the continuous evaluator (its TensorBoard `precision_at_1` scalars), the way
the tutorial's cifar10_eval.py runs beside the training. Later sources win for a step seen
twice. The training wall time of each step comes from TRAIN_DIR's events, as --all_checkpoints
computes it. Writes OUT.json (step, precision @ 1, wall seconds, oldest first).
"""
import glob
import json
import os
import sys

import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hvd_cifar.evaluate import training_wall_seconds  # noqa: E402


def precisions(source):
    """{step: precision @ 1} of one source."""
    if os.path.isdir(source):
        found = {}
        for path in sorted(glob.glob(os.path.join(source, "events.out.tfevents.*"))):
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    if value.tag == "precision_at_1":
                        # A float32 scalar: k / examples, so 6 digits give it back exactly.
                        found[event.step] = round(float(tf.make_ndarray(value.tensor)), 6)
        return found
    with open(source) as f:
        loaded = json.load(f)
    entries = loaded if isinstance(loaded, list) else [loaded]
    return {entry["global_step"]: entry["precision_at_1"] for entry in entries}


def main(out_path, train_dir, sources):
    curve = {}
    for source in sources:
        curve.update(precisions(source))
    wall_seconds = training_wall_seconds(train_dir)
    with open(out_path, "w") as f:
        json.dump([{"global_step": step, "precision_at_1": curve[step],
                    "wall_seconds": wall_seconds.get(step)} for step in sorted(curve)], f,
                  indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])

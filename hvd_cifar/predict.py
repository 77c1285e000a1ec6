"""Classify image files with a trained network.

    python -m hvd_cifar.predict [--checkpoint_dir T] IMAGE... [--top_k K] [--json]

T is a train_dir (its newest checkpoint's moving averages) or a SavedModel written by
hvd_cifar.export; without it, the weights shipped in the package (hvd_cifar/weights/). Any
PNG or JPEG is resized to 32x32 when needed, then preprocessed as the eval pipeline does
(central 24x24 crop, standardization). Prints `IMAGE: label (probability)` a line.
"""
if __name__ == "__main__":  # a command: TensorFlow's C++ lines begin at its import
    from hvd_cifar.native_logs import quiet_native_logs
    quiet_native_logs()

import dataclasses
import json
import os
import sys

import numpy as np
import tensorflow as tf

from hvd_cifar.classifier import load_classifier
from hvd_cifar.command import (DEFAULT_DATA_DIR, UserError, argument, flag, parse_command,
                               positive_int, run_command)
from hvd_cifar.data import records
from hvd_cifar.data.images import read_image


@dataclasses.dataclass
class PredictConfig:
    images: list = argument("PNG or JPEG files to classify", nargs="+", metavar="IMAGE")
    checkpoint_dir: str = flag(None, "a train_dir or an exported SavedModel (default: the "
                               "weights shipped in the package)", str)
    data_dir: str = flag(DEFAULT_DATA_DIR, "class names come from its cifar-10-batches-bin/"
                         "batches.meta.txt when present, else CIFAR-10's")
    top_k: int = flag(1, "how many classes to list an image", positive_int)
    json: bool = flag(False, "print one JSON object instead")


def predict(config):
    probabilities_of, names = load_classifier(config.checkpoint_dir)
    names = records.label_names(
        names or records.class_names(os.path.join(config.data_dir, records.BATCHES_DIR)),
        records.NUM_CLASSES)
    readable, failures = [], 0
    for path in config.images:
        try:
            readable.append((path, read_image(path)))
        except UserError as error:
            failures += 1
            print(f"hvd_cifar: error: {error}", file=sys.stderr, flush=True)
    results = []  # a file named twice is answered twice
    if readable:
        probabilities = probabilities_of(tf.constant(np.stack([p for _, p in readable])))
        for (path, _), row in zip(readable, np.asarray(probabilities)):
            best = np.argsort(-row)[:config.top_k]
            results.append((path, [{"label": names[i], "probability": float(row[i])}
                                   for i in best]))
    if config.json:
        print(json.dumps(dict(results), indent=1))
    else:
        for path, ranked in results:
            print(f"{path}: " + ", ".join(f"{r['label']} ({r['probability']:.3f})"
                                          for r in ranked))
    if failures:
        sys.exit(1)


def main(argv=None):
    config = parse_command(PredictConfig, "python -m hvd_cifar.predict",
                           "Classify PNG/JPEG images with a trained network.", argv)
    run_command(lambda: predict(config))


if __name__ == "__main__":
    main()

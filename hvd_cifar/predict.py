"""Classify image files with a trained network.

    python -m hvd_cifar.predict [--checkpoint_dir T] IMAGE... [--top_k K] [--json]

T is a train_dir (its newest checkpoint's moving averages) or a SavedModel written by
hvd_cifar.export; without it, the weights shipped in the package (hvd_cifar/weights/). Any
PNG or JPEG is resized to 32x32 when needed, then preprocessed as the eval pipeline does
(central 24x24 crop, standardization). Prints `IMAGE: label (probability)` a line.
"""
import dataclasses
import json
import os
import sys

import numpy as np
import tensorflow as tf

from hvd_cifar import checkpoint as checkpoint_lib, data, model as model_lib
from hvd_cifar.config import UserError, argument, flag, parse_command, positive_int, run_command
from hvd_cifar.convert import decode_to_cifar

SHIPPED_WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "weights")
SHIPPED_WEIGHTS = os.path.join(SHIPPED_WEIGHTS_DIR, "cifar10_moving_averages.h5")


def classifier(model):
    """uint8 images [n, 32, 32, 3] -> class probabilities [n, classes], the eval preprocessing
    inside, so a SavedModel of it needs nothing but pixels."""
    @tf.function(input_signature=[tf.TensorSpec([None, data.ORIGINAL_SIZE, data.ORIGINAL_SIZE,
                                                 data.DEPTH], tf.uint8, name="images")])
    def probabilities(images):
        standardized = tf.map_fn(data.eval_image, images, fn_output_signature=tf.float32)
        return tf.nn.softmax(tf.cast(model(standardized, training=False), tf.float32))
    return probabilities


def load_classifier(checkpoint_dir):
    """(function uint8 images -> probabilities, class names stored with it or None)."""
    if checkpoint_dir is None:
        if not os.path.isfile(SHIPPED_WEIGHTS):
            raise UserError(f"no --checkpoint_dir given and no shipped weights at "
                            f"{SHIPPED_WEIGHTS}")
        network = model_lib.inference()
        network.load_weights(SHIPPED_WEIGHTS)
        return classifier(network), None
    if os.path.isfile(os.path.join(checkpoint_dir, "saved_model.pb")):
        try:
            exported = tf.saved_model.load(checkpoint_dir)
        except (OSError, ValueError, tf.errors.OpError) as error:
            raise UserError(f"{checkpoint_dir}: cannot load the SavedModel ({error})") from None
        names = [n.decode() for n in exported.class_names.numpy()]
        return (lambda images: exported.serve(images)["probabilities"]), names
    network, _ = checkpoint_lib.load_averaged_model(checkpoint_lib.latest(checkpoint_dir))
    return classifier(network), None


def read_image(path):
    """uint8 [32, 32, 3]; a UserError naming the file when it cannot be read as an image."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as error:
        raise UserError(f"{path}: {error.strerror}") from None
    try:
        return decode_to_cifar(raw)
    except UserError as error:
        raise UserError(f"{path}: {error}") from None
    except Exception as error:  # PIL raises many kinds for a file that is not an image
        raise UserError(f"{path}: not a readable image ({type(error).__name__})") from None


@dataclasses.dataclass
class PredictConfig:
    images: list = argument("PNG or JPEG files to classify", nargs="+", metavar="IMAGE")
    checkpoint_dir: str = flag(None, "a train_dir or an exported SavedModel (default: the "
                               "weights shipped in the package)", str)
    data_dir: str = flag("data", "class names come from its cifar-10-batches-bin/"
                         "batches.meta.txt when present, else CIFAR-10's")
    top_k: int = flag(1, "how many classes to list an image", positive_int)
    json: bool = flag(False, "print one JSON object instead")


def predict(config):
    probabilities_of, names = load_classifier(config.checkpoint_dir)
    names = data.label_names(
        names or data.class_names(os.path.join(config.data_dir, data.BATCHES_DIR)),
        data.NUM_CLASSES)
    readable, failures = [], 0
    for path in config.images:
        try:
            readable.append((path, read_image(path)))
        except UserError as error:
            failures += 1
            print(f"hvd_cifar: error: {error}", file=sys.stderr, flush=True)
    results = {}
    if readable:
        probabilities = probabilities_of(tf.constant(np.stack([p for _, p in readable])))
        for (path, _), row in zip(readable, np.asarray(probabilities)):
            best = np.argsort(-row)[:config.top_k]
            results[path] = [{"label": names[i], "probability": float(row[i])} for i in best]
    if config.json:
        print(json.dumps(results, indent=1))
    else:
        for path, ranked in results.items():
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

"""Export a checkpoint's moving-average weights as a SavedModel for serving.

    python -m hvd_cifar.export --checkpoint_dir T --out DIR [--data_dir D]
    python -m hvd_cifar.export --checkpoint_dir T --weights FILE.h5     (weights only)

The serving signature takes uint8 images [batch, 32, 32, 3] of any batch size and returns
`probabilities` [batch, classes], `label` (the class index) and `label_name`; the eval
preprocessing (central crop, standardization) is inside. hvd_cifar.predict accepts DIR as its
--checkpoint_dir.
"""
import os
import shutil
import sys
import tempfile

import hvd_cifar  # noqa: F401  (quiets TensorFlow's start-up logging before it is imported)
from hvd_cifar import data
from hvd_cifar.config import ArgumentParser, UserError, run_command
from hvd_cifar.evaluate import latest_checkpoint, load_averaged_model
from hvd_cifar.predict import classifier

import tensorflow as tf


class ServingModel(tf.Module):
    def __init__(self, network, class_names):
        super().__init__()
        self.network = network
        self.class_names = tf.Variable(list(class_names), trainable=False, name="class_names")
        self.probabilities = classifier(network)

    @tf.function(input_signature=[tf.TensorSpec([None, data.ORIGINAL_SIZE, data.ORIGINAL_SIZE,
                                                 data.DEPTH], tf.uint8, name="images")])
    def serve(self, images):
        probabilities = self.probabilities(images)
        label = tf.argmax(probabilities, axis=1, output_type=tf.int32)
        return {"probabilities": probabilities, "label": label,
                "label_name": tf.gather(self.class_names, label)}


def export(checkpoint_dir, out_dir, class_names):
    """Write the SavedModel to a temporary folder beside out_dir, then rename it into place."""
    if os.path.exists(out_dir):
        raise UserError(f"--out {out_dir} already exists; choose another folder")
    network, global_step = load_averaged_model(latest_checkpoint(checkpoint_dir))
    serving = ServingModel(network, class_names)
    parent = os.path.dirname(os.path.abspath(out_dir))
    try:
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out_dir)}.")
    except OSError as error:
        raise UserError(f"--out {out_dir}: {error.strerror}") from None
    try:
        tf.saved_model.save(serving, staging, signatures={"serving_default": serving.serve})
        os.chmod(staging, 0o755)
        os.rename(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return global_step


def export_weights(checkpoint_dir, path):
    """The moving-average weights alone, as a Keras HDF5 weights file (what the package ships)."""
    network, global_step = load_averaged_model(latest_checkpoint(checkpoint_dir))
    partial = f"{path}.part.h5"
    network.save_weights(partial)
    os.replace(partial, path)
    return global_step


def main(argv=None):
    parser = ArgumentParser(prog="python -m hvd_cifar.export",
                            description="Export moving-average weights as a SavedModel.")
    parser.add_argument("--checkpoint_dir", "--checkpoint-dir", required=True,
                        help="train_dir whose newest checkpoint is exported")
    destination = parser.add_mutually_exclusive_group(required=True)
    destination.add_argument("--out", help="the SavedModel folder to create")
    destination.add_argument("--weights", help="write only the moving-average weights to this "
                             ".h5 file (as shipped in hvd_cifar/weights/)")
    parser.add_argument("--data_dir", "--data-dir", default="data",
                        help="class names from its batches.meta.txt when present, else "
                        "CIFAR-10's (default: data)")
    args = parser.parse_args(argv)
    if args.weights:
        step = export_weights(args.checkpoint_dir, args.weights)
        print(f"{args.weights}: moving-average weights of step {step}")
        return
    names = data.class_names(os.path.join(args.data_dir, data.BATCHES_DIR))
    step = export(args.checkpoint_dir, args.out, names)
    print(f"{args.out}: SavedModel of step {step} ({len(names)} classes)")


if __name__ == "__main__":
    run_command(lambda: main(sys.argv[1:]))

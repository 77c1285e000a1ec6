"""Export a checkpoint's moving-average weights as a SavedModel for serving.

    python -m hvd_cifar.export --checkpoint_dir T --out DIR [--data_dir D]
    python -m hvd_cifar.export --checkpoint_dir T --weights FILE.h5     (weights only)

The serving signature takes uint8 images [batch, 32, 32, 3] of any batch size and returns
`probabilities` [batch, classes], `label` (the class index) and `label_name`; the eval
preprocessing (central crop, standardization) is inside. hvd_cifar.predict accepts DIR as its
--checkpoint_dir.
"""
if __name__ == "__main__":  # a command: TensorFlow's C++ lines begin at its import
    from hvd_cifar.native_logs import quiet_native_logs
    quiet_native_logs()

import dataclasses
import os

import tensorflow as tf

from hvd_cifar import checkpoint as checkpoint_lib
from hvd_cifar.data import records
from hvd_cifar.command import DEFAULT_DATA_DIR, UserError, flag, parse_command, run_command
from hvd_cifar.files import staged_folder, write_atomically
from hvd_cifar.classifier import IMAGES_SHAPE, classifier



class ServingModel(tf.Module):
    def __init__(self, network, class_names):
        super().__init__()
        self.network = network
        self.class_names = tf.Variable(list(class_names), trainable=False, name="class_names")
        self.probabilities = classifier(network)

    @tf.function(input_signature=[tf.TensorSpec(IMAGES_SHAPE, tf.uint8, name="images")])
    def serve(self, images):
        probabilities = self.probabilities(images)
        label = tf.argmax(probabilities, axis=1, output_type=tf.int32)
        return {"probabilities": probabilities, "label": label,
                "label_name": tf.gather(self.class_names, label)}


def export(checkpoint_dir, out_dir, class_names):
    """Write the SavedModel to a temporary folder beside out_dir, then rename it into place."""
    if os.path.exists(out_dir):
        raise UserError(f"--out {out_dir} already exists; choose another folder")
    network, global_step, _ = checkpoint_lib.load_newest_averaged_model(checkpoint_dir)
    serving = ServingModel(network, class_names)
    try:
        with staged_folder(out_dir) as staging:
            tf.saved_model.save(serving, staging, signatures={"serving_default": serving.serve})
    except OSError as error:
        raise UserError(f"--out {out_dir}: {error.strerror}") from None
    return global_step


def export_weights(checkpoint_dir, path):
    """The moving-average weights alone, as a Keras HDF5 weights file (what the package ships)."""
    if os.path.exists(path):
        raise UserError(f"--weights {path} already exists; choose another file")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.access(folder, os.W_OK):
        raise UserError(f"--weights {path}: cannot write in {folder} "
                        f"({'no such folder' if not os.path.isdir(folder) else 'not writable'})")
    network, global_step, _ = checkpoint_lib.load_newest_averaged_model(checkpoint_dir)
    try:
        # Keras picks the HDF5 format by the file name's ending.
        write_atomically(path, network.save_weights, suffix=".part.h5", replace=False)
    except FileExistsError:
        raise UserError(f"--weights {path} was written by another export meanwhile; it is "
                        "kept, choose another file") from None
    except OSError as error:
        raise UserError(f"--weights {path}: {error.strerror or error}") from None
    return global_step


@dataclasses.dataclass
class ExportConfig:
    checkpoint_dir: str = flag(None, "train_dir whose newest checkpoint is exported "
                               "(required)", str)
    out: str = flag(None, "the SavedModel folder to create", str)
    weights: str = flag(None, "write only the moving-average weights to this .h5 file (as "
                        "shipped in hvd_cifar/weights/) instead of --out", str)
    data_dir: str = flag(DEFAULT_DATA_DIR, "class names from its batches.meta.txt when "
                         "present, else CIFAR-10's")


def run(config):
    if config.checkpoint_dir is None:
        raise UserError("--checkpoint_dir is required")
    if (config.out is None) == (config.weights is None):
        raise UserError("give one of --out DIR (a SavedModel) or --weights FILE.h5")
    if config.weights:
        step = export_weights(config.checkpoint_dir, config.weights)
        print(f"{config.weights}: moving-average weights of step {step}")
        return
    names = records.class_names(os.path.join(config.data_dir, records.BATCHES_DIR))
    step = export(config.checkpoint_dir, config.out, names)
    print(f"{config.out}: SavedModel of step {step} ({len(names)} classes)")


def main(argv=None):
    config = parse_command(ExportConfig, "python -m hvd_cifar.export",
                           "Export moving-average weights as a SavedModel.", argv)
    run_command(lambda: run(config))


if __name__ == "__main__":
    main()

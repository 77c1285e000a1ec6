"""A trained network as a classifier of uint8 32x32 images, with the evaluation preprocessing
inside (predict uses it, export saves it): from a train_dir's newest checkpoint, a SavedModel
of hvd_cifar.export, or the weights shipped in the package."""
import os

import tensorflow as tf

from hvd_cifar import checkpoint as checkpoint_lib, model as model_lib
from hvd_cifar.command import UserError
from hvd_cifar.data import pipeline, records

SHIPPED_WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "weights")
SHIPPED_WEIGHTS = os.path.join(SHIPPED_WEIGHTS_DIR, "cifar10_moving_averages.h5")


# Any number of uint8 CIFAR images, as they are stored.
IMAGES_SHAPE = [None, records.ORIGINAL_SIZE, records.ORIGINAL_SIZE, records.DEPTH]


def classifier(model):
    """uint8 images [n, 32, 32, 3] -> class probabilities [n, classes], the eval preprocessing
    inside, so a SavedModel of it needs nothing but pixels; n may be 0."""
    @tf.function(input_signature=[tf.TensorSpec(IMAGES_SHAPE, tf.uint8, name="images")])
    def probabilities(images):
        def classify():
            standardized = pipeline.central_crop_batch(images)
            return tf.nn.softmax(tf.cast(model(standardized, training=False), tf.float32))
        # The CPU convolutions fail on an empty batch rather than return one.
        return tf.cond(tf.shape(images)[0] > 0, classify,
                       lambda: tf.zeros([0, records.NUM_CLASSES], tf.float32))
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
        if not (hasattr(exported, "class_names") and hasattr(exported, "serve")):
            raise UserError(f"{checkpoint_dir}: a SavedModel that hvd_cifar.export did not "
                            "write (it has no class names or serve function)")
        names = [n.decode() for n in exported.class_names.numpy()]
        return (lambda images: exported.serve(images)["probabilities"]), names
    network, _, _ = checkpoint_lib.load_newest_averaged_model(checkpoint_dir)
    return classifier(network), None

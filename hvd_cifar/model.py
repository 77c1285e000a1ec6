"""The CIFAR-10 tutorial network (tensorflow/models tutorials/image/cifar10/cifar10.py) in Keras.

conv1 -> pool1 -> norm1 -> conv2 -> norm2 -> pool2 -> local3 -> local4 -> softmax_linear.
The model returns logits; the loss adds the weight decay of local3 and local4 (model.losses).
Nothing here is distributed: train.py wraps it for Horovod.
"""
if __name__ == "__main__":  # a command: TensorFlow's C++ lines begin at its import
    from hvd_cifar.native_logs import quiet_native_logs
    quiet_native_logs()

import dataclasses

import tensorflow as tf

from hvd_cifar.command import flag, parse_command, run_command
from hvd_cifar.data.pipeline import IMAGE_SIZE
from hvd_cifar.data.records import NUM_CLASSES

# Weight decay on the fully connected layers, as the tutorial's _variable_with_weight_decay.
LOCAL_WEIGHT_DECAY = 0.004
# The tutorial's norm1/norm2: tf.nn.lrn(depth_radius=4, bias=1.0, alpha=0.001 / 9.0, beta=0.75).
LRN_DEPTH_RADIUS = 4
LRN_BIAS = 1.0
LRN_ALPHA = 0.001 / 9.0
LRN_BETA = 0.75

OUTPUT_LAYER = "softmax_linear"  # the logits' layer
NUM_PARAMETERS = 1_068_298  # 4,864 + 102,464 + 885,120 + 73,920 + 1,930


class LocalResponseNormalization(tf.keras.layers.Layer):
    """tf.nn.local_response_normalization as a layer, so the model saves and loads by name."""

    def __init__(self, depth_radius=LRN_DEPTH_RADIUS, bias=LRN_BIAS, alpha=LRN_ALPHA,
                 beta=LRN_BETA, **kwargs):
        super().__init__(**kwargs)
        self.depth_radius, self.bias, self.alpha, self.beta = depth_radius, bias, alpha, beta

    def call(self, inputs):
        return tf.nn.local_response_normalization(
            inputs, depth_radius=self.depth_radius, bias=self.bias, alpha=self.alpha,
            beta=self.beta)

    def get_config(self):
        return {**super().get_config(), "depth_radius": self.depth_radius, "bias": self.bias,
                "alpha": self.alpha, "beta": self.beta}


def weight_decay(wd):
    """wd * tf.nn.l2_loss(w) = wd * sum(w**2) / 2, the tutorial's decay term."""
    return tf.keras.regularizers.L2(wd / 2.0)


def truncated_normal(stddev):
    # TF1's truncated_normal_initializer and Keras' TruncatedNormal both cut at 2 stddev.
    return tf.keras.initializers.TruncatedNormal(stddev=stddev)


def inference(use_fp16=False):
    """Build the tutorial CNN for 24x24x3 standardized images; returns a Keras model of logits.

    use_fp16 computes in float16 with float32 variables (mixed_float16, for GPUs with tensor
    cores); the logits are cast back to float32 so the loss is computed in full precision.
    """
    dtype = "mixed_float16" if use_fp16 else "float32"
    layers = tf.keras.layers
    images = tf.keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), name="images")

    x = layers.Conv2D(64, 5, padding="same", activation="relu", name="conv1", dtype=dtype,
                      kernel_initializer=truncated_normal(5e-2),
                      bias_initializer=tf.keras.initializers.Constant(0.0))(images)
    x = layers.MaxPool2D(3, strides=2, padding="same", name="pool1", dtype=dtype)(x)
    x = LocalResponseNormalization(name="norm1", dtype=dtype)(x)

    x = layers.Conv2D(64, 5, padding="same", activation="relu", name="conv2", dtype=dtype,
                      kernel_initializer=truncated_normal(5e-2),
                      bias_initializer=tf.keras.initializers.Constant(0.1))(x)
    x = LocalResponseNormalization(name="norm2", dtype=dtype)(x)
    x = layers.MaxPool2D(3, strides=2, padding="same", name="pool2", dtype=dtype)(x)

    x = layers.Flatten(name="flatten", dtype=dtype)(x)
    x = layers.Dense(384, activation="relu", name="local3", dtype=dtype,
                     kernel_initializer=truncated_normal(0.04),
                     kernel_regularizer=weight_decay(LOCAL_WEIGHT_DECAY),
                     bias_initializer=tf.keras.initializers.Constant(0.1))(x)
    x = layers.Dense(192, activation="relu", name="local4", dtype=dtype,
                     kernel_initializer=truncated_normal(0.04),
                     kernel_regularizer=weight_decay(LOCAL_WEIGHT_DECAY),
                     bias_initializer=tf.keras.initializers.Constant(0.1))(x)
    # The tutorial applies no softmax here: the loss takes unscaled logits.
    logits = layers.Dense(NUM_CLASSES, name=OUTPUT_LAYER, dtype=dtype,
                          kernel_initializer=truncated_normal(1 / 192.0),
                          bias_initializer=tf.keras.initializers.Constant(0.0))(x)
    if use_fp16:
        logits = layers.Activation("linear", dtype="float32", name="logits_float32")(logits)
    return tf.keras.Model(images, logits, name="cifar10")


def loss(model, logits, labels):
    """Mean sparse softmax cross-entropy plus the weight-decay terms (the tutorial's total_loss)."""
    cross_entropy = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    return cross_entropy + tf.add_n(model.losses)


@dataclasses.dataclass
class SummaryConfig:
    use_fp16: bool = flag(False, "mixed_float16 compute")


def main(argv=None):
    config = parse_command(SummaryConfig, "python -m hvd_cifar.model",
                           "Print the tutorial CNN's Keras summary.", argv)
    run_command(lambda: inference(config.use_fp16).summary())


if __name__ == "__main__":
    main()

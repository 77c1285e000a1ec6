"""The tutorial's input (cifar10_input.py), batch-wise: a rank's shard held as uint8, and the
distorted batch of every step as a pure function of the step, built on the host by tf.data or
on the rank's device inside the training step; centrally cropped evaluation batches; synthetic
batches. Nothing here knows about Horovod: sharding takes (num_shards, shard_index) as plain
arguments."""
import collections
import dataclasses

import numpy as np
import tensorflow as tf

from hvd_cifar.command import UserError, count, flag
from hvd_cifar.data.records import DEPTH, NUM_CLASSES, ORIGINAL_SIZE, read_records

IMAGE_SIZE = 24            # Images are cropped to 24x24, centrally for eval, randomly for training.
CROP_OFFSETS = ORIGINAL_SIZE - IMAGE_SIZE + 1  # a random crop starts at 0..8 on each axis
MAX_BRIGHTNESS_DELTA = 63  # tf.image.random_brightness on pixel values in [0, 255].
CONTRAST_LOWER, CONTRAST_UPPER = 0.2, 1.8
ENDLESS = np.iinfo(np.int64).max


@dataclasses.dataclass
class AugmentFlags:
    """Where training batches are distorted."""
    augment_on: str = flag("auto", "where the training batches are cropped and distorted: "
                           "device (the rank's shard kept in its GPU's memory, each batch built "
                           "inside the training step), host (whole batches built by tf.data on "
                           "the CPU); auto: device on a GPU, else host",
                           choices=("auto", "host", "device"))


def augmentation_place(augment_on):
    """'device' or 'host', for --augment_on (auto: device when a GPU is visible)."""
    if augment_on != "auto":
        return augment_on
    return "device" if tf.config.list_logical_devices("GPU") else "host"


# The random values of a batch, one per image: crop offsets [n, 2] (row, column), left-right
# flips [n], brightness deltas [n] and contrast factors [n].
Distortions = collections.namedtuple("Distortions", "offsets flips brightness contrast")


def draw_distortions(key, count):
    """The tutorial's random distortions of count images, each drawn on its own, from a
    stateless key (int64 [2]): the same key draws the same values on any device."""
    crop_key, flip_key, brightness_key, contrast_key = tf.unstack(
        tf.random.experimental.stateless_split(key, num=4))
    return Distortions(
        offsets=tf.random.stateless_uniform([count, 2], crop_key, minval=0,
                                            maxval=CROP_OFFSETS, dtype=tf.int32),
        flips=tf.random.stateless_uniform([count], flip_key) < 0.5,
        brightness=tf.random.stateless_uniform([count], brightness_key,
                                               -MAX_BRIGHTNESS_DELTA, MAX_BRIGHTNESS_DELTA),
        contrast=tf.random.stateless_uniform([count], contrast_key,
                                             CONTRAST_LOWER, CONTRAST_UPPER))


@tf.function(jit_compile=True)  # XLA fuses the batch's arithmetic into a few loops
def distort_batch(images, distortions):
    """Images [n, 32, 32, 3] -> float32 [n, 24, 24, 3]: per image, the crop, the flip,
    brightness (+ delta), contrast (around each channel's mean, as tf.image.adjust_contrast)
    and standardization (as tf.image.per_image_standardization), for the whole batch at once.

    Contrast and standardization are one pass over pixel sums. Contrast f keeps each channel's
    mean m_c, so the image's mean stays M = mean(m_c), its variance is f^2 var_c + var(m_c)
    (var_c: the pixels' variance around their channel's mean), and the result is
    ((x - m_c) f + m_c - M) / max(std, 1/sqrt(values)). Brightness moves x, m_c and M alike,
    so standardization undoes it exactly, as it does in the tutorial: it is drawn and needs no
    arithmetic. Pixels are whole numbers, so N x and the sums below are exact in float32 and a
    flat image comes out exactly 0."""
    count = tf.shape(images)[0]
    span = tf.range(IMAGE_SIZE)
    rows = distortions.offsets[:, :1] + span
    columns = distortions.offsets[:, 1:] + tf.where(distortions.flips[:, None],
                                                    IMAGE_SIZE - 1 - span, span)
    pixels = tf.reshape(rows[:, :, None] * ORIGINAL_SIZE + columns[:, None, :], [count, -1])
    # Cast before the gather: GPUs gather floats, not bytes.
    flat = tf.reshape(tf.cast(images, tf.float32), [count, ORIGINAL_SIZE * ORIGINAL_SIZE, DEPTH])
    crops = tf.gather(flat, pixels, axis=1, batch_dims=1)  # [n, N, 3], N = 576 pixels
    n = float(IMAGE_SIZE * IMAGE_SIZE)
    channel_sums = tf.reduce_sum(crops, axis=1, keepdims=True)  # N m_c, [n, 1, 3]
    deviations = crops * n - channel_sums  # N (x - m_c)
    spreads = channel_sums * DEPTH - tf.reduce_sum(channel_sums, axis=2, keepdims=True)
    contrast = distortions.contrast[:, None, None]
    variance = (tf.square(contrast) * tf.reduce_sum(tf.square(deviations), axis=[1, 2],
                                                   keepdims=True) / (DEPTH * n ** 3)
                + tf.reduce_sum(tf.square(spreads), axis=2, keepdims=True)
                / (DEPTH ** 3 * n ** 2))  # spreads = 3 N (m_c - M)
    std = tf.maximum(tf.sqrt(variance), tf.math.rsqrt(DEPTH * n))
    standardized = deviations * (contrast / (n * std)) + spreads / (DEPTH * n * std)
    return tf.reshape(standardized, [count, IMAGE_SIZE, IMAGE_SIZE, DEPTH])


def central_crop_batch(images):
    """Images [n, 32, 32, 3] -> float32 [n, 24, 24, 3]: the central crop and standardization
    of evaluation (cifar10_input.inputs), for the whole batch at once."""
    margin = (ORIGINAL_SIZE - IMAGE_SIZE) // 2
    return tf.image.per_image_standardization(tf.cast(
        images[:, margin:margin + IMAGE_SIZE, margin:margin + IMAGE_SIZE, :], tf.float32))


def shard_sizes(num_records, batch_size, num_shards):
    """(records a shard keeps, steps an epoch): equal for every shard, the remainder dropped."""
    records_per_shard = num_records // num_shards
    steps_per_epoch = records_per_shard // batch_size
    if steps_per_epoch == 0:
        raise UserError(f"{num_records} training records over {count(num_shards, 'rank')} leave "
                        f"{records_per_shard} a rank, fewer than --batch_size {batch_size}")
    return records_per_shard, steps_per_epoch


def shard_records(paths, num_records, num_shards, shard_index):
    """Undistorted records of one shard: record i goes to shard i % num_shards, and every
    shard keeps num_records // num_shards of them."""
    records_per_shard = num_records // num_shards
    return read_records(paths).shard(num_shards, shard_index).take(records_per_shard)


class Shard:
    """One rank's shard of the training set, held whole as uint8 images and int64 labels (the
    types a GPU gathers from a variable), on the host or on the rank's device, and the batch of
    every step of it.

    Epoch e visits the shard in a random order keyed by (seed, e, shard); the batch of step s
    is the next batch_size records of that order, distorted with values keyed by (seed, s,
    shard). So a batch is a pure function of the step: a run resumed at any step sees exactly
    what the uninterrupted run saw, and the host and the device build the same batches."""

    def __init__(self, paths, num_records, batch_size, num_shards=1, shard_index=0, seed=0,
                 device="/cpu:0"):
        self.records, self.steps_per_epoch = shard_sizes(num_records, batch_size, num_shards)
        self.batch_size, self.seed = batch_size, seed
        self.num_shards, self.shard_index = num_shards, shard_index
        images, labels = shard_records(paths, num_records, num_shards, shard_index).batch(
            self.records).get_single_element()
        # Variables, not constants: functions capture them by reference, so the shard is not
        # copied into every function graph.
        with tf.device(device):
            self.images = tf.Variable(images, trainable=False, name="shard_images")
            self.labels = tf.Variable(tf.cast(labels, tf.int64), trainable=False,
                                      name="shard_labels")
            # The device path keeps the current epoch's order (see batch_of_step).
            self.order = tf.Variable(tf.zeros([self.records], tf.int32), trainable=False,
                                     name="shard_order")
            self.order_epoch = tf.Variable(-1, dtype=tf.int64, trainable=False,
                                           name="shard_order_epoch")

    def key(self, stream, number):
        """A stateless key of (seed, number, shard): even streams for distortions, odd for
        orders, so no two draws of any shard share a key."""
        return tf.stack([tf.constant(self.seed, tf.int64),
                         2 * (tf.cast(number, tf.int64) * self.num_shards + self.shard_index)
                         + stream])

    def epoch_order(self, epoch):
        """The shard's records in the random order of epoch: a stable sort of random keys."""
        keys = tf.random.stateless_uniform([self.records], self.key(1, epoch), minval=None,
                                           maxval=None, dtype=tf.int32)
        return tf.argsort(keys, stable=True)

    def epoch_batches(self, epoch):
        """The record indices of every batch of epoch: int32 [steps_per_epoch, batch_size]."""
        used = self.steps_per_epoch * self.batch_size
        return tf.reshape(self.epoch_order(epoch)[:used], [self.steps_per_epoch,
                                                           self.batch_size])

    def assemble(self, step, record_indices):
        """(distorted images float32 [batch, 24, 24, 3], labels int32 [batch]) of step."""
        images = tf.gather(self.images, record_indices)
        labels = tf.cast(tf.gather(self.labels, record_indices), tf.int32)
        return distort_batch(images, draw_distortions(self.key(0, step), self.batch_size)), labels

    def batch_of_step(self, step):
        """The batch of step, where the shard lives (the device path, inside the compiled
        training step): the epoch's order is drawn once an epoch and kept in a variable."""
        step = tf.cast(step, tf.int64)
        epoch = step // self.steps_per_epoch

        def draw_order():
            self.order.assign(self.epoch_order(epoch))
            self.order_epoch.assign(epoch)
            return True

        tf.cond(tf.not_equal(self.order_epoch, epoch), draw_order, lambda: False)
        first = tf.cast(step % self.steps_per_epoch, tf.int32) * self.batch_size
        return self.assemble(step, self.order[first:first + self.batch_size])

    def device_batches(self, start_step=0):
        """The device path's batches one by one, outside a training step (to time them)."""
        batch_of_step = tf.function(self.batch_of_step)
        return (batch_of_step(step) for step in DeviceSteps(self, start_step))

    def host_dataset(self, start_step=0):
        """tf.data batches of the shard from start_step on, built on the host (the host path):
        whole batches at a time, several in parallel, in order."""
        start_epoch, into_epoch = divmod(start_step, self.steps_per_epoch)
        batch_indices = (tf.data.Dataset.range(start_epoch, ENDLESS)
                         .flat_map(lambda epoch: tf.data.Dataset.from_tensor_slices(
                             self.epoch_batches(epoch)))
                         .skip(into_epoch))
        return (tf.data.Dataset.zip((tf.data.Dataset.range(start_step, ENDLESS), batch_indices))
                .map(self.assemble, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                .prefetch(tf.data.AUTOTUNE))


class DeviceSteps:
    """The device path's input: an iterator of step numbers (int64 tensors: one trace serves
    every step); the training step builds each batch with shard.batch_of_step."""

    def __init__(self, shard, start_step=0):
        self.shard, self.step = shard, start_step

    def __iter__(self):
        return self

    def __next__(self):
        step = tf.constant(self.step, tf.int64)
        self.step += 1
        return step


def eval_dataset(paths, batch_size, num_shards=1, shard_index=0):
    """Every record of this shard once, centrally cropped, in order; the last batch may be short."""
    return (read_records(paths).shard(num_shards, shard_index)
            .batch(batch_size)
            .map(lambda images, labels: (central_crop_batch(images), labels),
                 num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def synthetic_dataset(batch_size, seed=0):
    """One random batch in the model's input shape, repeated: no disk, no input cost."""
    images = tf.random.stateless_normal([batch_size, IMAGE_SIZE, IMAGE_SIZE, DEPTH], [seed, 0])
    labels = tf.random.stateless_uniform([batch_size], [seed, 1], maxval=NUM_CLASSES,
                                         dtype=tf.int32)
    return tf.data.Dataset.from_tensors((images, labels)).repeat()

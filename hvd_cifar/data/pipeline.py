"""The tutorial's input pipelines (cifar10_input.py): distorted training batches of one shard,
centrally cropped evaluation batches, synthetic batches. Nothing here knows about Horovod:
sharding takes (num_shards, shard_index) as plain arguments."""
import numpy as np
import tensorflow as tf

from hvd_cifar.command import UserError
from hvd_cifar.data.records import DEPTH, NUM_CLASSES, read_records

IMAGE_SIZE = 24            # Images are cropped to 24x24, centrally for eval, randomly for training.
MAX_BRIGHTNESS_DELTA = 63  # tf.image.random_brightness on pixel values in [0, 255].
CONTRAST_LOWER, CONTRAST_UPPER = 0.2, 1.8


def random_distortions(image, seed):
    """The tutorial's crop, flip, brightness and contrast, stateless so a seed replays them."""
    crop_seed, flip_seed, brightness_seed, contrast_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=4))
    image = tf.cast(image, tf.float32)
    image = tf.image.stateless_random_crop(image, [IMAGE_SIZE, IMAGE_SIZE, DEPTH], crop_seed)
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    image = tf.image.stateless_random_brightness(image, MAX_BRIGHTNESS_DELTA, brightness_seed)
    return tf.image.stateless_random_contrast(image, CONTRAST_LOWER, CONTRAST_UPPER,
                                              contrast_seed)


def distort_image(image, seed):
    """A training image: random distortions, then per-image standardization."""
    return tf.image.per_image_standardization(random_distortions(image, seed))


def eval_image(image):
    """Central 24x24 crop and standardization (cifar10_input.inputs)."""
    image = tf.image.resize_with_crop_or_pad(tf.cast(image, tf.float32), IMAGE_SIZE, IMAGE_SIZE)
    return tf.image.per_image_standardization(image)


def shard_sizes(num_records, batch_size, num_shards):
    """(records a shard keeps, steps an epoch): equal for every shard, the remainder dropped."""
    records_per_shard = num_records // num_shards
    steps_per_epoch = records_per_shard // batch_size
    if steps_per_epoch == 0:
        raise UserError(f"{num_records} training records over {num_shards} ranks leave "
                        f"{records_per_shard} a rank, fewer than --batch_size {batch_size}")
    return records_per_shard, steps_per_epoch


def shard_records(paths, num_records, num_shards, shard_index):
    """Undistorted records of one shard: record i goes to shard i % num_shards, and every
    shard keeps num_records // num_shards of them."""
    records_per_shard = num_records // num_shards
    return read_records(paths).shard(num_shards, shard_index).take(records_per_shard)


def train_dataset(paths, num_records, batch_size, num_shards=1, shard_index=0, seed=0,
                  start_step=0):
    """Endless distorted training batches of this shard, positioned at step start_step.

    Shards are taken before shuffling (record i goes to shard i % num_shards); each keeps the
    same number of records and yields the same steps_per_epoch batches, so every rank runs the
    same number of steps. The shard is read once through the record reader and kept in memory;
    epoch e visits it in the order of a stateless permutation seeded by (seed, e, shard), and
    every example's distortions are seeded by its position. So the batch at any step is a pure
    function of the step: a run resumed there sees exactly what the uninterrupted run saw.
    """
    records_per_shard, steps_per_epoch = shard_sizes(num_records, batch_size, num_shards)
    examples_per_epoch = steps_per_epoch * batch_size
    images, shard_labels = shard_records(paths, num_records, num_shards, shard_index).batch(
        records_per_shard).get_single_element()
    # A host variable, not a constant: tf.data functions capture it by reference, so the
    # shard is not copied into every function graph.
    with tf.device("/cpu:0"):
        shard_images = tf.Variable(images, trainable=False, name="shard_images")

    def example(position):
        epoch, index_in_epoch = position // examples_per_epoch, position % examples_per_epoch
        permutation_seed = tf.stack([tf.constant(seed, tf.int64), epoch * num_shards + shard_index])
        record = tf.random.experimental.index_shuffle(index_in_epoch, permutation_seed,
                                                      tf.constant(records_per_shard - 1, tf.int64))
        example_id = position * num_shards + shard_index  # unique over shards and epochs
        distortion_seed = tf.stack([tf.constant(seed, tf.int64), example_id])
        return (distort_image(tf.gather(shard_images, record), distortion_seed),
                tf.gather(shard_labels, record))

    return (tf.data.Dataset.range(start_step * batch_size, np.iinfo(np.int64).max)
            .map(example, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE))


def eval_dataset(paths, batch_size, num_shards=1, shard_index=0):
    """Every record of this shard once, centrally cropped, in order; the last batch may be short."""
    return (read_records(paths).shard(num_shards, shard_index)
            .map(lambda image, label: (eval_image(image), label),
                 num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size)
            .prefetch(tf.data.AUTOTUNE))


def synthetic_dataset(batch_size, seed=0):
    """One random batch in the model's input shape, repeated: no disk, no input cost."""
    images = tf.random.stateless_normal([batch_size, IMAGE_SIZE, IMAGE_SIZE, DEPTH], [seed, 0])
    labels = tf.random.stateless_uniform([batch_size], [seed, 1], maxval=NUM_CLASSES,
                                         dtype=tf.int32)
    return tf.data.Dataset.from_tensors((images, labels)).repeat()

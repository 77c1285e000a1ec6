"""CIFAR-10 binary input (the tutorial's cifar10_input.py): download and verify, read, augment, shard.

A record is 1 label byte followed by 3072 image bytes, depth-major (3 x 32 x 32). Nothing here
knows about Horovod: sharding takes (num_shards, shard_index) as plain arguments.

    python -m hvd_cifar.data download --data_dir D [--data_url URL]
    python -m hvd_cifar.data convert SRC OUT      (image folders -> this binary layout: convert.py)
"""
import dataclasses
import hashlib
import os
import tarfile
import tempfile
import urllib.error
import urllib.request

import numpy as np
import tensorflow as tf

from hvd_cifar.config import UserError, flag, parse_subcommand, run_command
from hvd_cifar.files import write_atomically

# The binary format.
ORIGINAL_SIZE = 32         # CIFAR-10 images are 32x32 RGB.
DEPTH = 3
LABEL_BYTES = 1
IMAGE_BYTES = ORIGINAL_SIZE * ORIGINAL_SIZE * DEPTH
RECORD_BYTES = LABEL_BYTES + IMAGE_BYTES
NUM_CLASSES = 10

# The tutorial's input processing (cifar10_input.py).
IMAGE_SIZE = 24            # Images are cropped to 24x24, centrally for eval, randomly for training.
MAX_BRIGHTNESS_DELTA = 63  # tf.image.random_brightness on pixel values in [0, 255].
CONTRAST_LOWER, CONTRAST_UPPER = 0.2, 1.8

# The official archive (https://www.cs.toronto.edu/~kriz/cifar.html).
DATA_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
DATA_SHA256 = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
ARCHIVE_NAME = "cifar-10-binary.tar.gz"
BATCHES_DIR = "cifar-10-batches-bin"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)
META_FILE = "batches.meta.txt"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")

DOWNLOAD_CHUNK_BYTES = 1 << 20
DOWNLOAD_TIMEOUT_SECONDS = 60


# ---------------------------------------------------------------------------------------------
# Download, verify, extract

def prepare(data_dir, data_url=DATA_URL, sha256=DATA_SHA256, download=True):
    """Return data_dir/cifar-10-batches-bin, extracting or downloading the archive when needed.

    The batches folder only ever appears by an atomic rename of a fully extracted copy, and the
    archive only by a rename after its checksum matched: an interrupted run leaves nothing that
    looks complete.
    """
    batches_dir = os.path.join(data_dir, BATCHES_DIR)
    if os.path.isdir(batches_dir):
        return batches_dir
    archive = os.path.join(data_dir, ARCHIVE_NAME)
    if not os.path.isfile(archive):
        if not download:
            raise UserError(f"{batches_dir} not found and --no_download is set: put "
                            f"{ARCHIVE_NAME} or {BATCHES_DIR}/ in --data_dir {data_dir}")
        fetch(data_url, archive, sha256)
    else:
        check_sha256(archive, sha256)
    extract(archive, data_dir)
    return batches_dir


def fetch(url, archive, sha256):
    """Download url to archive, verifying size and sha256 before the file gets its final name."""
    data_dir = os.path.dirname(archive) or "."
    try:
        os.makedirs(data_dir, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create --data_dir {data_dir}: {error.strerror}") from None

    def download(partial):
        digest = hashlib.sha256()
        received = 0
        with open(partial, "wb") as f, urllib.request.urlopen(
                url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response:
            expected_bytes = response.headers.get("Content-Length")
            while chunk := response.read(DOWNLOAD_CHUNK_BYTES):
                f.write(chunk)
                digest.update(chunk)
                received += len(chunk)
        if expected_bytes is not None and received != int(expected_bytes):
            raise UserError(f"download of {url} stopped after {received} of {expected_bytes} "
                            "bytes; run again to retry")
        if sha256 and digest.hexdigest() != sha256:
            raise UserError(f"download of {url} has sha256 {digest.hexdigest()}, expected "
                            f"{sha256}; refusing to extract it")

    try:
        write_atomically(archive, download)
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise UserError(f"cannot download {url} ({reason}); without internet, put "
                        f"{ARCHIVE_NAME} or {BATCHES_DIR}/ in --data_dir {data_dir}, or pass "
                        f"--data_url file:///path/to/{ARCHIVE_NAME}") from None


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(DOWNLOAD_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(archive, sha256):
    if sha256 and (actual := file_sha256(archive)) != sha256:
        raise UserError(f"{archive} has sha256 {actual}, expected {sha256}: it is not the "
                        "CIFAR-10 binary archive (remove it, or pass --data_sha256 for a "
                        "different data set in the same layout)")


def extract(archive, data_dir):
    """Extract into a hidden temporary folder, then rename the batches folder into place."""
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".extract-") as scratch:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(scratch, filter="data")
        except (tarfile.TarError, OSError, EOFError) as error:
            raise UserError(f"{archive}: cannot extract ({error})") from None
        extracted = os.path.join(scratch, BATCHES_DIR)
        if not os.path.isdir(extracted):
            raise UserError(f"{archive} has no {BATCHES_DIR}/ folder")
        try:
            os.rename(extracted, os.path.join(data_dir, BATCHES_DIR))
        except OSError:
            # Another process (a rank on the same host) finished first; its copy is complete.
            if not os.path.isdir(os.path.join(data_dir, BATCHES_DIR)):
                raise


# ---------------------------------------------------------------------------------------------
# Record files

def split_files(batches_dir, split):
    """The batch files of split ('train' or 'test'), each checked; returns (paths, num_records)."""
    names = TRAIN_FILES if split == "train" else TEST_FILES
    paths = [os.path.join(batches_dir, name) for name in names]
    return paths, sum(check_record_file(path) for path in paths)


def check_record_file(path, num_classes=NUM_CLASSES):
    """Number of records in path; a UserError naming the file when it is missing or corrupt."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: batch file is missing")
    size = os.path.getsize(path)
    if size == 0 or size % RECORD_BYTES:
        raise UserError(f"{path}: {size} bytes is not a whole number of {RECORD_BYTES}-byte "
                        "records (truncated, or not a CIFAR-10 batch file)")
    labels = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, RECORD_BYTES)[:, 0]
    out_of_range = np.flatnonzero(labels >= num_classes)
    if out_of_range.size:
        record = int(out_of_range[0])
        raise UserError(f"{path}: record {record} has label {labels[record]}, outside "
                        f"0..{num_classes - 1}")
    return size // RECORD_BYTES


def write_records(path, images, labels):
    """Write uint8 HWC images [n, 32, 32, 3] and their labels as CIFAR-10 records, atomically."""
    images = np.asarray(images, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.uint8).reshape(-1, 1)
    depth_major = images.transpose(0, 3, 1, 2).reshape(len(images), IMAGE_BYTES)
    records = np.concatenate([labels, depth_major], axis=1)
    write_atomically(path, records.tofile)


def class_names(batches_dir):
    """Class names from batches.meta.txt (one a line) when present, else CIFAR-10's."""
    meta = os.path.join(batches_dir, META_FILE) if batches_dir else None
    if meta and os.path.isfile(meta):
        try:
            with open(meta, encoding="utf-8") as f:
                names = [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(f"{meta}: cannot be read as class names, one a line "
                            f"({getattr(error, 'strerror', None) or error.reason})") from None
        if len(names) > NUM_CLASSES:
            raise UserError(f"{meta} names {len(names)} classes; the network has "
                            f"{NUM_CLASSES} outputs")
        if names:
            return tuple(names)
    return CIFAR10_CLASSES


def label_names(names, count):
    """count names for labels 0..count-1: names, then `class N` for labels they leave out."""
    return tuple(names[:count]) + tuple(f"class {i}" for i in range(len(names), count))


def decode_record(record):
    raw = tf.io.decode_raw(record, tf.uint8)
    label = tf.cast(raw[0], tf.int32)
    depth_major = tf.reshape(raw[LABEL_BYTES:], [DEPTH, ORIGINAL_SIZE, ORIGINAL_SIZE])
    return tf.transpose(depth_major, [1, 2, 0]), label


def read_records(paths):
    """(uint8 image [32, 32, 3], int32 label) for every record of paths, in file order."""
    return tf.data.FixedLengthRecordDataset(list(paths), RECORD_BYTES).map(
        decode_record, num_parallel_calls=tf.data.AUTOTUNE)


# ---------------------------------------------------------------------------------------------
# Preprocessing

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


# ---------------------------------------------------------------------------------------------
# Pipelines

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


# ---------------------------------------------------------------------------------------------
# Command line

@dataclasses.dataclass
class DownloadConfig:
    data_dir: str = flag("data", "folder for the archive and cifar-10-batches-bin/")
    data_url: str = flag(DATA_URL, "archive URL, a mirror or file://")
    data_sha256: str = flag(DATA_SHA256, "expected sha256 of the archive")


def download(config):
    batches_dir = prepare(config.data_dir, config.data_url, config.data_sha256)
    _, num_train = split_files(batches_dir, "train")
    _, num_test = split_files(batches_dir, "test")
    print(f"{batches_dir}: {num_train} training and {num_test} test records")


def main(argv=None):
    from hvd_cifar import convert  # the converter writes records with this module
    name, config = parse_subcommand(
        {"download": (DownloadConfig, "download, verify and extract CIFAR-10"),
         "convert": (convert.ConvertConfig, "turn a class-folder tree of images into the "
                     "binary layout")},
        "python -m hvd_cifar.data", "Prepare CIFAR-10 data in the binary layout.", argv)
    run_command(lambda: download(config) if name == "download" else convert.run(config))


if __name__ == "__main__":
    main()

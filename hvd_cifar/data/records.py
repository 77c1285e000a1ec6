"""The CIFAR-10 binary record format (the tutorial's cifar10_input.py reads it): a record is 1
label byte followed by 3072 image bytes, depth-major (3 x 32 x 32); five training files and one
test file in cifar-10-batches-bin/, with the class names one a line in batches.meta.txt."""
import hashlib
import os

import numpy as np
import tensorflow as tf

from hvd_cifar.command import UserError
from hvd_cifar.files import write_atomically

ORIGINAL_SIZE = 32         # CIFAR-10 images are 32x32 RGB.
DEPTH = 3
LABEL_BYTES = 1
IMAGE_BYTES = ORIGINAL_SIZE * ORIGINAL_SIZE * DEPTH
RECORD_BYTES = LABEL_BYTES + IMAGE_BYTES
NUM_CLASSES = 10
BATCHES_DIR = "cifar-10-batches-bin"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)
META_FILE = "batches.meta.txt"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")


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
    try:
        labels = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, RECORD_BYTES)[:, 0]
    except OSError as error:
        raise UserError(f"{path}: batch file cannot be read ({error.strerror})") from None
    out_of_range = np.flatnonzero(labels >= num_classes)
    if out_of_range.size:
        record = int(out_of_range[0])
        raise UserError(f"{path}: record {record} has label {labels[record]}, outside "
                        f"0..{num_classes - 1}")
    return size // RECORD_BYTES


FINGERPRINT_SAMPLE_BYTES = 1 << 20


def fingerprint(paths):
    """A short hex digest of data files that tells one data set from another without reading
    it whole: each file's name, size and its first and last MiB."""
    digest = hashlib.sha256()
    for path in paths:
        size = os.path.getsize(path)
        digest.update(f"{os.path.basename(path)}:{size}:".encode())
        try:
            with open(path, "rb") as f:
                digest.update(f.read(FINGERPRINT_SAMPLE_BYTES))
                f.seek(max(0, size - FINGERPRINT_SAMPLE_BYTES))
                digest.update(f.read(FINGERPRINT_SAMPLE_BYTES))
        except OSError as error:
            raise UserError(f"{path}: batch file cannot be read ({error.strerror})") from None
    return digest.hexdigest()[:16]


def write_records(path, images, labels):
    """Write uint8 HWC images [n, 32, 32, 3] and their labels as CIFAR-10 records, atomically."""
    images = np.asarray(images, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.uint8).reshape(-1, 1)
    depth_major = images.transpose(0, 3, 1, 2).reshape(len(images), IMAGE_BYTES)
    rows = np.concatenate([labels, depth_major], axis=1)
    write_atomically(path, rows.tofile)


def write_random_batches_dir(folder, records_per_file, seed):
    """folder/cifar-10-batches-bin/ whose training files hold records_per_file random records
    each (input measurements without data)."""
    batches_dir = os.path.join(folder, BATCHES_DIR)
    os.makedirs(batches_dir)
    generator = np.random.default_rng(seed)
    for name in TRAIN_FILES:
        images = generator.integers(0, 256, (records_per_file, ORIGINAL_SIZE, ORIGINAL_SIZE,
                                             DEPTH), dtype=np.uint8)
        labels = generator.integers(0, NUM_CLASSES, records_per_file, dtype=np.uint8)
        write_records(os.path.join(batches_dir, name), images, labels)
    return batches_dir


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

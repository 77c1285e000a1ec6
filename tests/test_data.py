"""The CIFAR-10 binary reader, sharding, the tutorial's distortions and bad-file errors."""
import itertools
import os

import numpy as np
import pytest
import tensorflow as tf

from hvd_cifar.data import pipeline, records
from hvd_cifar.command import UserError
from helpers import random_images, set_label, write_cifar_dir


def labels_as_ids(count, offset):
    """Label bytes 0..n-1 over the training files, so each record can be recognised (the
    pipeline never checks labels; only check_record_file does)."""
    return np.arange(offset, offset + count)


def train_paths(batches_dir):
    return [os.path.join(batches_dir, name) for name in records.TRAIN_FILES]


def test_reader_returns_the_written_labels_and_pixels_in_hwc_order(tmp_path):
    images = random_images(17, seed=1)
    labels = np.arange(17) % 10
    path = str(tmp_path / "batch.bin")
    records.write_records(path, images, labels)

    assert os.path.getsize(path) == 17 * 3073
    raw = np.fromfile(path, dtype=np.uint8).reshape(17, 3073)
    # Depth-major on disk: the first 1024 image bytes are the red plane.
    assert (raw[:, 1:1025].reshape(17, 32, 32) == images[..., 0]).all()
    examples = list(records.read_records([path]).as_numpy_iterator())
    assert [int(label) for _, label in examples] == labels.tolist()
    for (image, label), expected in zip(examples, images):
        assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
        assert (image == expected).all()
    assert examples[0][1].dtype == np.int32


def test_training_examples_are_counted_from_the_files(tmp_path):
    batches_dir, _ = write_cifar_dir(str(tmp_path), train_per_file=7, num_test=3)
    assert records.split_files(batches_dir, "train")[1] == 35
    assert records.split_files(batches_dir, "test")[1] == 3


@pytest.mark.parametrize("num_shards", [2, 3])
def test_shards_are_disjoint_equal_and_cover_every_record(tmp_path, num_shards):
    batches_dir, _ = write_cifar_dir(str(tmp_path), train_per_file=13, labels=labels_as_ids)
    paths, num_records = train_paths(batches_dir), 65
    shards = [[int(label) for _, label in
               pipeline.shard_records(paths, num_records, num_shards, index).as_numpy_iterator()]
              for index in range(num_shards)]
    flat = list(itertools.chain(*shards))
    assert len(flat) == len(set(flat)), "a record is in two shards"
    assert {len(shard) for shard in shards} == {num_records // num_shards}
    # Only the remainder (fewer records than shards) is left out, to keep the shards equal.
    assert len(set(range(num_records)) - set(flat)) == num_records % num_shards


@pytest.mark.parametrize("num_shards", [2, 3])
def test_every_shard_yields_the_same_batches_an_epoch_from_its_own_records(tmp_path, num_shards):
    batches_dir, _ = write_cifar_dir(str(tmp_path), train_per_file=13, labels=labels_as_ids)
    paths = train_paths(batches_dir)
    batch_size = 4
    _, steps_per_epoch = pipeline.shard_sizes(65, batch_size, num_shards)
    seen = []
    for index in range(num_shards):
        shard_ids = {int(label) for _, label in
                     pipeline.shard_records(paths, 65, num_shards, index).as_numpy_iterator()}
        batches = list(pipeline.train_dataset(paths, 65, batch_size, num_shards, index, seed=5)
                       .take(steps_per_epoch).as_numpy_iterator())
        epoch_ids = [int(i) for _, labels in batches for i in labels]
        assert len(epoch_ids) == len(set(epoch_ids)) == steps_per_epoch * batch_size
        assert set(epoch_ids) <= shard_ids
        seen.append(set(epoch_ids))
    assert not set.intersection(*seen)


def test_too_many_ranks_for_the_data_is_a_clear_error():
    with pytest.raises(UserError, match="fewer than --batch_size 128"):
        pipeline.shard_sizes(1000, 128, 8)


def test_a_resumed_pipeline_replays_the_uninterrupted_batches(tmp_path):
    batches_dir, _ = write_cifar_dir(str(tmp_path), train_per_file=10)
    paths, num_records = records.split_files(batches_dir, "train")
    # 50 records over 2 shards, batch 4: 6 steps an epoch, so step 9 is inside epoch 2.
    uninterrupted = list(pipeline.train_dataset(paths, num_records, 4, 2, 1, seed=3)
                         .take(14).as_numpy_iterator())
    resumed = list(pipeline.train_dataset(paths, num_records, 4, 2, 1, seed=3, start_step=9)
                   .take(5).as_numpy_iterator())
    for (images, labels), (expected_images, expected_labels) in zip(resumed, uninterrupted[9:]):
        np.testing.assert_array_equal(labels, expected_labels)
        np.testing.assert_array_equal(images, expected_images)
    other_seed = next(pipeline.train_dataset(paths, num_records, 4, 2, 1,
                                             seed=4).as_numpy_iterator())
    assert not np.array_equal(other_seed[0], uninterrupted[0][0])


def test_distortions_stay_within_the_tutorial_ranges():
    image = random_images(1, seed=7)[0].astype(np.float32)
    crops = {(dy, dx, flip): (image[dy:dy + 24, dx:dx + 24, :][:, ::-1] if flip
                              else image[dy:dy + 24, dx:dx + 24, :])
             for dy in range(9) for dx in range(9) for flip in (False, True)}
    seen_flips, deltas, contrasts = set(), [], []
    for element in range(40):
        out = pipeline.random_distortions(image, tf.constant([11, element], tf.int64)).numpy()
        assert out.shape == (24, 24, 3)
        # brightness then contrast: out = c * (crop - channel mean) + channel mean + delta.
        matches = []
        for key, crop in crops.items():
            centred_crop = crop - crop.mean(axis=(0, 1))
            centred_out = out - out.mean(axis=(0, 1))
            contrast = (centred_out * centred_crop).sum() / (centred_crop ** 2).sum()
            if np.allclose(centred_out, contrast * centred_crop, atol=1e-2):
                delta = out.mean(axis=(0, 1)) - crop.mean(axis=(0, 1))
                matches.append((key, contrast, delta))
        assert len(matches) == 1, f"element {element}: not a 24x24 window of the image"
        (dy, dx, flip), contrast, delta = matches[0]
        np.testing.assert_allclose(delta, delta[0], atol=1e-3)  # one delta for all channels
        seen_flips.add(flip)
        deltas.append(delta[0])
        contrasts.append(contrast)
    assert all(-63 - 1e-3 <= d <= 63 + 1e-3 for d in deltas)
    assert all(0.2 - 1e-4 <= c <= 1.8 + 1e-4 for c in contrasts)
    assert seen_flips == {False, True}
    assert np.ptp(deltas) > 30 and np.ptp(contrasts) > 0.5  # the ranges are really used


def test_training_images_are_standardized_per_image():
    images = random_images(8, seed=2)
    for i, image in enumerate(images):
        out = pipeline.distort_image(image, tf.constant([0, i], tf.int64)).numpy()
        assert abs(out.mean()) < 1e-4
        assert abs(out.std() - 1) < 1e-3


def test_eval_crop_is_the_centre():
    image = random_images(1, seed=3)[0]
    centre = image[4:28, 4:28, :].astype(np.float32)
    expected = (centre - centre.mean()) / max(centre.std(), 1 / np.sqrt(centre.size))
    np.testing.assert_allclose(pipeline.eval_image(image).numpy(), expected, atol=1e-4)


def test_eval_pipeline_reads_every_record_once_in_order_with_a_short_last_batch(tmp_path):
    batches_dir, arrays = write_cifar_dir(str(tmp_path), num_test=23)
    paths, _ = records.split_files(batches_dir, "test")
    labels = [int(x) for _, batch in pipeline.eval_dataset(paths, 10).as_numpy_iterator()
              for x in batch]
    assert labels == arrays["test_batch.bin"][1].tolist()


def test_synthetic_batches_have_the_model_input_shape():
    images, labels = next(iter(pipeline.synthetic_dataset(16, seed=1)))
    assert images.shape == (16, 24, 24, 3) and images.dtype == tf.float32
    assert labels.shape == (16,) and labels.dtype == tf.int32
    assert 0 <= int(tf.reduce_min(labels)) and int(tf.reduce_max(labels)) < 10


def test_a_truncated_batch_file_is_named(tmp_path):
    batches_dir, _ = write_cifar_dir(str(tmp_path))
    path = os.path.join(batches_dir, "data_batch_3.bin")
    with open(path, "r+b") as f:
        f.truncate(3073 * 5 + 100)
    with pytest.raises(UserError, match="data_batch_3.bin: 15465 bytes is not a whole number"):
        records.split_files(batches_dir, "train")


def test_a_missing_batch_file_is_named(tmp_path):
    batches_dir, _ = write_cifar_dir(str(tmp_path))
    os.remove(os.path.join(batches_dir, "data_batch_5.bin"))
    with pytest.raises(UserError, match="data_batch_5.bin: batch file is missing"):
        records.split_files(batches_dir, "train")


def test_a_label_above_9_is_named_with_its_record(tmp_path):
    batches_dir, _ = write_cifar_dir(str(tmp_path))
    set_label(os.path.join(batches_dir, "test_batch.bin"), record=4, label=12)
    with pytest.raises(UserError, match="test_batch.bin: record 4 has label 12, outside 0..9"):
        records.split_files(batches_dir, "test")


def test_class_names_come_from_batches_meta_when_present(tmp_path):
    assert records.class_names(str(tmp_path)) == records.CIFAR10_CLASSES
    (tmp_path / "batches.meta.txt").write_text("cat\ndog\n\n")
    assert records.class_names(str(tmp_path)) == ("cat", "dog")

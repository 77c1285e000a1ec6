"""`python -m hvd_cifar.data convert`: class-folder trees of images into the binary layout."""
import os
import tarfile

import pytest
from PIL import Image

from hvd_cifar.data import convert, records
from hvd_cifar.command import UserError
from helpers import assert_one_line_error, python_module, random_images

CLASSES = ("cat", "dog", "ship")


def make_tree(root, per_class_train=4, per_class_test=2, seed=0):
    """root/train/<class>/*.png and root/test/<class>/*.png; {(split, class): [pixels]}."""
    images = random_images(len(CLASSES) * (per_class_train + per_class_test), seed)
    written, index = {}, 0
    for split, count in (("train", per_class_train), ("test", per_class_test)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(images[index]).save(folder / f"{i:04d}.png")
                written.setdefault((split, name), []).append(images[index])
                index += 1
    return written


def read_split(batches_dir, files):
    paths = [os.path.join(batches_dir, f) for f in files]
    return [(image, int(label)) for image, label in records.read_records(paths).as_numpy_iterator()]


def as_set(records):
    return {(label, image.tobytes()) for image, label in records}


def test_a_png_tree_round_trips_with_labels_from_the_folder_names(tmp_path):
    written = make_tree(tmp_path / "src")
    result = python_module("hvd_cifar.data", "convert", tmp_path / "src", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "12 training and 6 test records" in result.stdout
    batches_dir = tmp_path / "out" / records.BATCHES_DIR
    assert (batches_dir / records.META_FILE).read_text().split() == list(CLASSES)
    for split, files in (("train", records.TRAIN_FILES), ("test", records.TEST_FILES)):
        expected = {(CLASSES.index(name), image.tobytes())
                    for (s, name), images in written.items() if s == split for image in images}
        assert as_set(read_split(str(batches_dir), files)) == expected  # pixels preserved
    assert records.split_files(str(batches_dir), "train")[1] == 12


def test_the_record_order_is_shuffled_by_the_seed(tmp_path):
    make_tree(tmp_path / "src", per_class_train=10)
    for seed in (1, 2):
        convert.convert(str(tmp_path / "src"), str(tmp_path / f"out{seed}"), seed=seed)
    labels = [[label for _, label in read_split(str(tmp_path / f"out{seed}" / records.BATCHES_DIR),
                                                records.TRAIN_FILES)] for seed in (1, 2)]
    assert labels[0] != labels[1]
    assert labels[0] != sorted(labels[0])  # classes are mixed, not in folder order
    convert.convert(str(tmp_path / "src"), str(tmp_path / "again"), seed=1)
    assert labels[0] == [label for _, label in read_split(
        str(tmp_path / "again" / records.BATCHES_DIR), records.TRAIN_FILES)]


def test_other_sizes_are_resized_and_a_tar_with_a_top_folder_works(tmp_path):
    big = tmp_path / "set" / "train" / "cat"
    big.mkdir(parents=True)
    Image.new("RGB", (64, 48), (200, 10, 10)).save(big / "a.jpg")
    Image.new("L", (20, 20), 128).save(big / "b.png")
    (tmp_path / "set" / "train" / "dog").mkdir()
    Image.new("RGB", (32, 32), (0, 0, 255)).save(tmp_path / "set" / "train" / "dog" / "c.png")
    with tarfile.open(tmp_path / "set.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "set", arcname="set")
    counts = convert.convert(str(tmp_path / "set.tar.gz"), str(tmp_path / "out"),
                          test_fraction=0.34, seed=0)
    assert counts == (2, 1, 0)
    examples = read_split(str(tmp_path / "out" / records.BATCHES_DIR),
                          records.TRAIN_FILES + records.TEST_FILES)
    assert all(image.shape == (32, 32, 3) for image, _ in examples)
    colours = {tuple(image[16, 16]) for image, _ in examples}
    assert (128, 128, 128) in colours and (0, 0, 255) in colours  # grey became RGB


def test_bad_images_stop_the_conversion_and_nothing_is_written(tmp_path):
    make_tree(tmp_path / "src")
    (tmp_path / "src" / "train" / "dog" / "broken.png").write_text("not a png")
    (tmp_path / "src" / "test" / "cat" / "empty.jpg").write_bytes(b"")
    result = python_module("hvd_cifar.data", "convert", tmp_path / "src", tmp_path / "out")
    assert_one_line_error(result, "2 images in", "cannot be read", "nothing was written",
                          status=1)
    assert "bad image: train/dog/broken.png" in result.stderr
    assert "bad image: test/cat/empty.jpg" in result.stderr
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


def test_skip_bad_skips_them_and_says_how_many(tmp_path):
    make_tree(tmp_path / "src")
    (tmp_path / "src" / "train" / "dog" / "broken.png").write_text("not a png")
    result = python_module("hvd_cifar.data", "convert", tmp_path / "src", tmp_path / "out",
                           "--skip_bad")
    assert result.returncode == 0, result.stderr
    assert "12 training and 6 test records; 1 bad images skipped" in result.stdout


def test_a_tree_without_test_folder_needs_a_test_fraction(tmp_path):
    make_tree(tmp_path / "src", per_class_test=0)
    with pytest.raises(UserError, match="has no test/ folder: pass --test_fraction"):
        convert.convert(str(tmp_path / "src"), str(tmp_path / "out"))
    assert convert.convert(str(tmp_path / "src"), str(tmp_path / "out"),
                        test_fraction=0.25) == (9, 3, 0)


def test_existing_output_is_never_overwritten(tmp_path):
    make_tree(tmp_path / "src")
    convert.convert(str(tmp_path / "src"), str(tmp_path / "out"))
    with pytest.raises(UserError, match="already exists"):
        convert.convert(str(tmp_path / "src"), str(tmp_path / "out"))

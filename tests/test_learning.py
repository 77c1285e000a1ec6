"""The tutorial network learns real images through the real trainer and evaluator.

Data: the UCI handwritten digits (1,797 8x8 greyscale images of 0-9) that ship inside the
scikit-learn wheel, so nothing is downloaded at test time. Each digit is scaled 3x to 24x24,
padded to 32x32x3 and written as CIFAR-10 records: 1,497 for training, 300 for the test.
After 300 steps of 64 the network must classify 85% of the test digits (chance is 10%).
"""
import json
import os

import numpy as np
from sklearn.datasets import load_digits

from hvd_cifar.data import records
from helpers import python_module

NUM_TEST = 300


def write_digits_as_cifar(root):
    digits = load_digits()
    pixels = (digits.images * (255 / 16)).round().astype(np.uint8)      # 0..16 -> 0..255
    scaled = np.kron(pixels, np.ones((3, 3), dtype=np.uint8))            # 8x8 -> 24x24
    padded = np.pad(scaled, ((0, 0), (4, 4), (4, 4)))                    # -> 32x32
    images = np.repeat(padded[..., None], 3, axis=3)                     # -> 32x32x3
    order = np.random.default_rng(0).permutation(len(images))
    images, labels = images[order], digits.target[order]
    batches_dir = os.path.join(root, records.BATCHES_DIR)
    os.makedirs(batches_dir)
    train_images, train_labels = images[NUM_TEST:], labels[NUM_TEST:]
    for name, part in zip(records.TRAIN_FILES, np.array_split(np.arange(len(train_images)), 5)):
        records.write_records(os.path.join(batches_dir, name), train_images[part],
                           train_labels[part])
    records.write_records(os.path.join(batches_dir, "test_batch.bin"), images[:NUM_TEST],
                       labels[:NUM_TEST])


def test_the_tutorial_network_learns_the_digits_far_above_chance(tmp_path):
    write_digits_as_cifar(str(tmp_path / "digits"))
    train = python_module("hvd_cifar.train", "--data_dir", tmp_path / "digits",
                          "--train_dir", tmp_path / "run", "--max_steps", 300,
                          "--batch_size", 64, "--log_frequency", 50, "--no_download")
    assert train.returncode == 0, train.stderr
    evaluate = python_module("hvd_cifar.evaluate", "--data_dir", tmp_path / "digits",
                             "--checkpoint_dir", tmp_path / "run", "--run_once")
    assert evaluate.returncode == 0, evaluate.stderr
    assert "precision @ 1 = " in evaluate.stdout
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert result["num_examples"] == NUM_TEST
    assert result["global_step"] == 300
    assert result["precision_at_1"] >= 0.85, result["precision_at_1"]

"""The weights shipped in the package classify real CIFAR-10 test images out of the box.

The images come from ../shared/data/cifar10-jpeg.tar.gz (the JPEG copy of CIFAR-10 beside the
repository on our machines and in CI): the first two test images of every class.
"""
import hashlib
import os
import re
import tarfile

import pytest

from hvd_cifar import classifier
from hvd_cifar.data import records
from helpers import REPO_ROOT, python_module

SHARED_JPEG = os.path.join(REPO_ROOT, "..", "shared", "data", "cifar10-jpeg.tar.gz")


@pytest.fixture(scope="module")
def cifar10_test_images(tmp_path_factory):
    if not os.path.isfile(SHARED_JPEG):
        pytest.fail(f"needs the CIFAR-10 JPEG copy at {SHARED_JPEG}")
    folder = tmp_path_factory.mktemp("cifar10")
    wanted = {f"test/{name}/{i:04d}.jpg": name for name in records.CIFAR10_CLASSES
              for i in range(2)}
    with tarfile.open(SHARED_JPEG) as tar:
        for member in tar:
            if member.name in wanted:
                path = folder / member.name.replace("/", "_")
                path.write_bytes(tar.extractfile(member).read())
    images = {str(folder / name.replace("/", "_")): label for name, label in wanted.items()}
    assert len(images) == 20 and all(os.path.exists(p) for p in images)
    return images


def test_the_package_ships_the_weights_and_their_model_card():
    assert os.path.getsize(classifier.SHIPPED_WEIGHTS) > 4_000_000  # 1,068,298 float32 values
    card = open(os.path.join(classifier.SHIPPED_WEIGHTS_DIR, "MODEL_CARD.md")).read()
    assert "precision @ 1" in card and "python -m hvd_cifar" in card
    # The card describes the file that is shipped, not an earlier one.
    with open(classifier.SHIPPED_WEIGHTS, "rb") as weights:
        digest = hashlib.sha256(weights.read()).hexdigest()
    assert re.findall(r"sha256 `([0-9a-f]{64})`", card) == [digest]


def test_predict_without_a_checkpoint_uses_the_shipped_weights(cifar10_test_images):
    result = python_module("hvd_cifar.predict", "--data_dir", "/nonexistent",
                           *cifar10_test_images)
    assert result.returncode == 0, result.stderr
    predicted = dict(re.findall(r"^(\S+): (\w+) \(", result.stdout, re.MULTILINE))
    assert set(predicted) == set(cifar10_test_images)
    correct = sum(predicted[path] == label for path, label in cifar10_test_images.items())
    # A network of the model card's precision gets most of them; a broken one (wrong
    # preprocessing, wrong weights) gets about one in ten.
    assert correct >= 16, result.stdout

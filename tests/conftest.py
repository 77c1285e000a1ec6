import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from helpers import write_cifar_dir  # noqa: E402


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """200 training and 30 test records of random images: at 2 ranks x batch 16 a shard of
    100 gives 6 steps an epoch."""
    root = tmp_path_factory.mktemp("tiny")
    write_cifar_dir(str(root), train_per_file=40, num_test=30)
    return root

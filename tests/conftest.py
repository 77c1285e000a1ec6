import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from helpers import REPO_ROOT, write_cifar_dir  # noqa: E402

CLUSTER = os.path.join(REPO_ROOT, "tests", "cluster")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """200 training and 30 test records of random images: at 2 ranks x batch 16 a shard of
    100 gives 6 steps an epoch."""
    root = tmp_path_factory.mktemp("tiny")
    write_cifar_dir(str(root), train_per_file=40, num_test=30)
    return root


@pytest.fixture(scope="module")
def namespace_hosts():
    """Hosts 10.200.0.2 (hvdA) and 10.200.0.3 (hvdB); the environment that reaches them."""
    made = subprocess.run([os.path.join(CLUSTER, "netns.sh"), "up"], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.fail("two-host tests need root and iproute2 to make network namespaces: "
                    + made.stderr)
    try:
        yield {"PATH": f"{CLUSTER}:{os.environ['PATH']}"}
    finally:
        subprocess.run([os.path.join(CLUSTER, "netns.sh"), "down"], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """A real 20 MB tmpfs: room for one 12.8 MB checkpoint, not for two."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount_point)],
                   check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)

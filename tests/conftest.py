"""Shared fixtures, and the rule that marks tests by what they need.

Markers are not hand labels: collection reads each test's source, the sources of the fixtures it
uses and of the helpers it calls, and marks it
  launcher  starts horovodrun, mpirun, srun/sbatch, make or a launcher of launch/;
  trains    starts a training process or trains a network in this one;
  root      needs root: mounts, network namespaces, a Slurm cluster;
  shared    needs ../shared beside the clone (the CIFAR-10 JPEG copy).
`make test-fast` runs the tests with none of them. A guard keeps the rule honest: a test it left
unmarked that starts a launcher or a trainer anyway fails, naming the command.
"""
import inspect
import os
import re
import subprocess
import sys
import textwrap

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from helpers import ENV, REPO_ROOT, write_cifar_dir  # noqa: E402
from hvd_cifar.data import records  # noqa: E402

CLUSTER = os.path.join(REPO_ROOT, "tests", "cluster")

NEEDS = {
    "launcher": r"horovodrun|mpirun|\bsrun\b|sbatch|scontrol|\blaunched\(|"
                r"(local|multinode|elastic|reproduce|check_cluster)\.sh|\"make\"|'make'|"
                r"namespace_hosts|slurm",
    "trains": r"hvd_cifar\.train\b|\"hvd_cifar\.train\"|train_command|\btrained\b|one_step|"
              r"\.fit\(|hvd_cifar\.bench\b|\"hvd_cifar\.bench\"|bench_suite|\.step\(",
    "root": r"small_disk|namespace_hosts|\bmount\b|netns|slurm|apt-get|unwritable_for_root|"
            r"geteuid",
    "shared": r"\.\./shared|\"shared\"|SHARED_",
}
NEEDS = {name: re.compile(pattern) for name, pattern in NEEDS.items()}


def pytest_configure(config):
    for name, meaning in (("launcher", "starts a launcher (horovodrun, mpirun, srun, make)"),
                          ("trains", "starts a training process or trains a network"),
                          ("root", "needs root (mounts, network namespaces, Slurm)"),
                          ("shared", "needs ../shared beside the clone")):
        config.addinivalue_line("markers", f"{name}: {meaning} (set by tests/conftest.py)")


def source_of(function):
    try:
        return textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError):
        return ""


def sources_reached(item):
    """The test's source, its fixtures' (transitively) and the module helpers they call."""
    seen, texts = set(), []
    module = item.module
    pending = [item.function]
    for definitions in item._fixtureinfo.name2fixturedefs.values():
        pending += [definition.func for definition in definitions]
    while pending:
        function = pending.pop()
        if function in seen:
            continue
        seen.add(function)
        text = source_of(function)
        texts.append(text)
        for name in set(re.findall(r"\b([A-Za-z_]\w*)\(", text)):
            helper = getattr(module, name, None)
            if inspect.isfunction(helper) and helper.__module__ in (module.__name__, "helpers"):
                pending.append(helper)
    texts += [repr(mark.args) for mark in item.iter_markers("parametrize")]
    return "\n".join(texts)


def pytest_collection_modifyitems(config, items):
    for item in items:
        text = sources_reached(item)
        for name, pattern in NEEDS.items():
            if pattern.search(text):
                item.add_marker(name)


HEAVY_COMMAND = re.compile(r"horovodrun|mpirun|\bsrun\b|sbatch|^make$|"
                           r"(local|multinode|elastic|reproduce|check_cluster)\.sh$|"
                           r"^hvd_cifar\.(train|bench)$")


@pytest.fixture(autouse=True)
def unmarked_tests_start_no_launcher_or_trainer(request, monkeypatch):
    if any(request.node.get_closest_marker(name) for name in ("launcher", "trains")):
        return
    original = subprocess.Popen.__init__

    def guarded(self, args, *rest, **options):
        words = [args] if isinstance(args, (str, bytes)) else [str(a) for a in args]
        for word in words:
            if HEAVY_COMMAND.search(os.path.basename(str(word))) or HEAVY_COMMAND.search(
                    str(word)):
                raise AssertionError(f"this test starts `{' '.join(words)}` but the rule in "
                                     "tests/conftest.py did not mark it: extend NEEDS")
        original(self, args, *rest, **options)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """200 training and 30 test records of random images: at 2 ranks x batch 16 a shard of
    100 gives 6 steps an epoch. Built once; tests read it and never write into it."""
    root = tmp_path_factory.mktemp("tiny")
    write_cifar_dir(str(root), train_per_file=40, num_test=30)
    return root


# The run every evaluate, predict and export test reads: 80 training records of 10 named
# classes, a test split that divides neither the eval batch (10) nor the ranks (2).
TRAINED_TEST_RECORDS = 23
TRAINED_CLASS_NAMES = [f"class{i}" for i in range(10)]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """(data_dir, train_dir, test images, test labels) after 4 real training steps of batch 8,
    logged every 2. Built once; tests read it (evaluations write their results into it)."""
    root = tmp_path_factory.mktemp("trained")
    batches_dir, arrays = write_cifar_dir(str(root), train_per_file=16,
                                          num_test=TRAINED_TEST_RECORDS)
    with open(os.path.join(batches_dir, records.META_FILE), "w") as f:
        f.write("\n".join(TRAINED_CLASS_NAMES) + "\n")
    train_dir = root / "run"
    result = subprocess.run([sys.executable, "-m", "hvd_cifar.train", "--data_dir", str(root),
                             "--train_dir", str(train_dir), "--max_steps", "4", "--batch_size",
                             "8", "--log_frequency", "2", "--no_download"],
                            capture_output=True, text=True, env=ENV, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    return (root, train_dir, *arrays["test_batch.bin"])


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

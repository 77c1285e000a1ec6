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
import ast
import builtins
import hashlib
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

# Matched against code as ast.unparse writes it (single quotes, no comments or docstrings).
NEEDS = {
    # A launch script counts where its name ends a string (a path given to run), not where a
    # test reads it in a command's output.
    "launcher": r"horovodrun|mpirun|\bsrun\b|sbatch|scontrol|\blaunched\(|"
                r"['/](local|multinode|elastic|reproduce|check_cluster)\.sh'|"
                r"(?:return|\(|=)\s*\['make', (?!'-n')|namespace_hosts|slurm",
    # The trainer's module name counts unless the code only asks whether it is in a list.
    "trains": r"hvd_cifar\.train\b(?!'\s+(?:not\s+)?in\b)|train_command|\btrained\b|one_step|"
              r"\.fit\(|hvd_cifar\.bench\b|bench_suite|\.step\(",
    "root": r"small_disk|namespace_hosts|'mount'|netns|slurm|apt-get|unwritable_for_root",
    "shared": r"\.\./shared|'shared'|SHARED_",
}
NEEDS = {name: re.compile(pattern) for name, pattern in NEEDS.items()}
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
SHARED_DIR = os.path.realpath(os.path.join(REPO_ROOT, "..", "shared"))


def pytest_configure(config):
    for name, meaning in (("launcher", "starts a launcher (horovodrun, mpirun, srun, make)"),
                          ("trains", "starts a training process or trains a network"),
                          ("root", "needs root (mounts, network namespaces, Slurm)"),
                          ("shared", "needs ../shared beside the clone")):
        config.addinivalue_line("markers", f"{name}: {meaning} (set by tests/conftest.py)")


def code_of(function):
    """function's code without docstrings or comments, as ast.unparse writes it."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return ""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)


def tests_functions_called(function, code):
    """The functions of tests/ that code calls by a name (or module.name) bound where function
    was defined: the test module, helpers, or any module of tests/ it imported."""
    found = []
    for module_name, name in re.findall(r"\b(?:([A-Za-z_]\w*)\.)?([A-Za-z_]\w*)\(", code):
        scope = function.__globals__
        if module_name:
            owner = scope.get(module_name)
            helper = getattr(owner, name, None) if inspect.ismodule(owner) else None
        else:
            helper = scope.get(name)
        helper = inspect.unwrap(helper) if callable(helper) else helper  # contextmanagers
        if inspect.isfunction(helper) and os.path.dirname(
                os.path.abspath(inspect.getsourcefile(helper) or "")) == TESTS_DIR:
            found.append(helper)
    return found


def sources_reached(item):
    """The test's code, its fixtures' (transitively) and the code of every function of tests/
    they call, in any module, without docstrings or comments; and its parameters."""
    seen, texts = set(), []
    pending = [item.function]
    for name, definitions in item._fixtureinfo.name2fixturedefs.items():
        if name != "unmarked_tests_start_nothing_heavy":  # the guard itself needs nothing
            pending += [definition.func for definition in definitions]
    while pending:
        function = pending.pop()
        if function in seen:
            continue
        seen.add(function)
        code = code_of(function)
        texts.append(code)
        pending += tests_functions_called(function, code)
    texts += [repr(mark.args) for mark in item.iter_markers("parametrize")]
    return "\n".join(texts)


def pytest_collection_modifyitems(config, items):
    for item in items:
        text = sources_reached(item)
        for name, pattern in NEEDS.items():
            if pattern.search(text):
                item.add_marker(name)


# What a test may start only when the rule marked it so, by the marker it needs.
COMMANDS_NEEDING = {
    "launcher": re.compile(r"horovodrun|mpirun|^srun$|^sbatch$|^scontrol$|^make$|"
                           r"(local|multinode|elastic|reproduce|check_cluster)\.sh$"),
    "trains": re.compile(r"^hvd_cifar\.(train|bench)$"),
    "root": re.compile(r"^(mount|umount|apt-get)$|netns\.sh$|system_packages\.sh$"),
}


def needs_of_command(words):
    """The markers a command needs: what it starts, and ../shared when it names it."""
    needs = set()
    dry_make = words and os.path.basename(words[0]) == "make" and "-n" in words
    for word in words:
        for name, pattern in COMMANDS_NEEDING.items():
            if (pattern.search(os.path.basename(word)) or pattern.search(word)) and not (
                    name == "launcher" and dry_make):
                needs.add(name)
        if SHARED_DIR in os.path.realpath(word) or "../shared" in word:
            needs.add("shared")
    return needs


@pytest.fixture(autouse=True)
def unmarked_tests_start_nothing_heavy(request, monkeypatch):
    """The runtime side of the rule: a test it left unmarked that starts a launcher, a trainer
    or a root command, trains in this process (hvd.init, Trainer.run) or reads ../shared fails
    at once, naming what it did, instead of running it."""
    marked = {name for name in NEEDS if request.node.get_closest_marker(name)}

    def refuse(what, need):
        raise AssertionError(f"this test {what} but the rule in tests/conftest.py did not mark "
                             f"it `{need}`: extend NEEDS")

    original_popen = subprocess.Popen.__init__

    def guarded_popen(self, args, *rest, **options):
        words = [os.fsdecode(args)] if isinstance(args, (str, bytes)) else [
            os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in args]
        for need in sorted(needs_of_command(words) - marked):
            refuse(f"starts `{' '.join(words)}`", need)
        original_popen(self, args, *rest, **options)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded_popen)
    if "shared" not in marked:
        original_open = builtins.open

        def guarded_open(file, *rest, **options):
            if isinstance(file, (str, bytes, os.PathLike)) and os.path.realpath(
                    os.fsdecode(file)).startswith(SHARED_DIR + os.sep):
                refuse(f"opens {os.fsdecode(file)}", "shared")
            return original_open(file, *rest, **options)
        monkeypatch.setattr(builtins, "open", guarded_open)
    if "trains" not in marked:
        import horovod.tensorflow as hvd
        from hvd_cifar import train
        monkeypatch.setattr(hvd, "init", lambda *a, **k: refuse("calls hvd.init()", "trains"))
        monkeypatch.setattr(train.Trainer, "run",
                            lambda *a, **k: refuse("calls Trainer.run()", "trains"))


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
    logged every 2. Built once; tests only read it (evaluations write to an --eval_dir), and
    the session checks at its end that no test changed it."""
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
    made = folder_contents(root)
    yield (root, train_dir, *arrays["test_batch.bin"])
    # Every test reads it: one that wrote into it (an evaluation without --eval_dir) would
    # change what the tests after it read.
    assert folder_contents(root) == made, "a test wrote into the shared trained fixture"


def folder_contents(root):
    """{relative path: sha256 of its bytes} of every file under root."""
    contents = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                contents[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return contents


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

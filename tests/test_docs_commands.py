"""Every command line in the shell blocks of README.md and docs/*.md still works.

Each line is checked the way it can be here: the few in RUN_FOR_REAL run for real (in a folder
laid out as the docs assume, with two training steps instead of thousands); every hvd_cifar
command is parsed by its own flag parser, horovodrun's options by horovodrun's, mpirun's options
by mpirun itself, a make line by `make -n`, and a launcher or sbatch script must exist, be
executable and take the flags passed through it. A line none of these reaches must be listed in
NOT_CHECKED with the reason, so a new kind of command fails here until it is.
"""
import glob
import importlib
import os
import re
import shlex
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import BIN, REPO_ROOT, run

DOC_FILES = ["README.md"] + sorted(os.path.relpath(path, REPO_ROOT) for path in
                                   glob.glob(os.path.join(REPO_ROOT, "docs", "*.md")))

# Lines run for real, in order, in a folder with `data/` (tiny CIFAR-10 records); each
# `--max_steps` becomes 2. They share that folder: the run the later ones read is runs/alone.
RUN_FOR_REAL = [
    "python -m hvd_cifar.train --data_dir data --train_dir runs/alone --max_steps 1000",
    "python -m hvd_cifar.rerun runs/alone/run.json --train_dir runs/again",
    "python -m hvd_cifar.evaluate --data_dir data --checkpoint_dir runs/train --run_once",
    "python -m hvd_cifar.export --checkpoint_dir runs/train --out exported/",
    "python -m hvd_cifar.predict --top_k 2 cat.jpg ship.png",
    "python -m hvd_cifar.plan --gpus 32",
]

# Commands that are not this project's, with why they are not run.
NOT_CHECKED = {
    "cp": "copies the user's own download into place",
    "printf": "writes an example hostfile",
}

# Positional words a launcher script takes before the trainer's flags.
LAUNCHER_POSITIONALS = {"launch/local.sh": 0, "launch/multinode.sh": 1,
                        "launch/check_cluster.sh": 1, "launch/elastic.sh": 3}
# The command each sbatch script passes its flags to.
SLURM_MODULES = {"slurm/train.sh": "hvd_cifar.train", "slurm/eval.sh": "hvd_cifar.evaluate",
                 "slurm/check.sh": "hvd_cifar.check"}


def doc_command_lines():
    """(doc file, command line) for every command in a ```sh block, continuations joined."""
    found = []
    for doc in DOC_FILES:
        with open(os.path.join(REPO_ROOT, doc), encoding="utf-8") as f:
            text = f.read()
        for block in re.findall(r"^```(?:sh|bash|shell)\n(.*?)^```", text, re.S | re.M):
            block = re.sub(r"\\\n", " ", block)
            lines = block.splitlines()
            if any(line.startswith("$ ") for line in lines):  # a session: commands and output
                lines = [line[2:] for line in lines if line.startswith("$ ")]
            for line in lines:
                if shlex.split(line, comments=True):
                    found.append((doc, line))
    return found


def words_of(line):
    """The words of a command line without comments, `...` placeholders and leading VAR=value
    settings or `taskset -c N`."""
    words = [w for w in shlex.split(line, comments=True) if w != "..."]
    while words and re.match(r"^[A-Z_]+=", words[0]):
        words = words[1:]
    if words[:1] == ["taskset"]:
        words = words[3:]
    return words


def parse_hvd_cifar_flags(module_name, argv):
    """Parse argv with the module's own parser, running nothing: argparse's error is a
    SystemExit(2) naming the flag."""
    module = importlib.import_module(module_name)
    if hasattr(module, "__path__"):  # a package: `python -m` runs its __main__
        module = importlib.import_module(module_name + ".__main__")
    parsed = []
    original = module.run_command
    module.run_command = lambda main: parsed.append(main)
    try:
        module.main(argv)
    except SystemExit as exit:
        if not (exit.code == 0 and "--help" in argv):
            raise
        return
    finally:
        module.run_command = original
    assert parsed, f"{module_name} {argv}: parsed, but nothing to run"


def python_module_call(words):
    """(module, argv) of the `python -m hvd_cifar.X ...` inside words, or None."""
    for i in range(len(words) - 2):
        if os.path.basename(words[i]).startswith("python") and words[i + 1] == "-m":
            return words[i + 2], words[i + 3:]
    return None


def check_dry(line):
    words = words_of(line)
    head = words[0]
    if head in NOT_CHECKED:
        return
    if head == ".":
        assert words[1] == ".venv/bin/activate" and os.path.exists(os.path.join(BIN, "activate"))
        return
    if head == "make":
        made = run(["make", "-n", *words[1:]], cwd=REPO_ROOT)
        assert made.returncode == 0, made.stderr
        return
    if head in ("horovodrun", "mpirun"):
        call = python_module_call(words)
        assert call, f"{line}: no python -m hvd_cifar command inside"
        launcher_options = words[1:words.index(next(w for w in words[1:]
                                                    if os.path.basename(w).startswith("python")))]
        if head == "horovodrun":
            from horovod.runner import launch
            saved = sys.argv
            sys.argv = ["horovodrun", *launcher_options, "true"]
            try:
                launch.parse_args()
            finally:
                sys.argv = saved
        else:  # mpirun's own options, with a command that does nothing
            # --oversubscribe: the line may ask for more ranks than this host has cores.
            mpi = run(["mpirun", *launcher_options, "--oversubscribe", "true"])
            assert mpi.returncode == 0, mpi.stderr
        parse_hvd_cifar_flags(*call)
        return
    call = python_module_call(words)
    if call:
        parse_hvd_cifar_flags(*call)
        return
    if head == "sbatch":
        script = next(w for w in words if w.startswith("slurm/"))
        assert os.access(os.path.join(REPO_ROOT, script), os.X_OK), script
        parse_hvd_cifar_flags(SLURM_MODULES[script], words[words.index(script) + 1:])
        return
    if head in LAUNCHER_POSITIONALS:
        assert os.access(os.path.join(REPO_ROOT, head), os.X_OK), head
        rest = words[1:]
        if head == "launch/local.sh" and rest[:1] == ["-np"]:
            rest = rest[2:]
        rest = rest[LAUNCHER_POSITIONALS[head]:]
        if head != "launch/check_cluster.sh":
            parse_hvd_cifar_flags("hvd_cifar.train", rest)
        return
    pytest.fail(f"{line}: a command this test cannot check; add a way, or list it in "
                "NOT_CHECKED with the reason")


@pytest.mark.parametrize("doc, line", doc_command_lines(),
                         ids=[f"{doc}:{line[:60]}" for doc, line in doc_command_lines()])
def test_a_doc_command_is_one_this_code_takes(doc, line):
    if shlex.join(words_of(line)) in RUN_FOR_REAL:
        return  # run for real below
    check_dry(line)


def test_the_commands_run_for_real_are_still_in_the_docs():
    in_docs = {shlex.join(words_of(line)) for _, line in doc_command_lines()}
    assert [line for line in RUN_FOR_REAL if line not in in_docs] == []


def test_the_tour_s_commands_run_here(tiny_data, tmp_path):
    os.symlink(tiny_data, tmp_path / "data")
    rng = np.random.default_rng(0)
    for name in ("cat.jpg", "ship.png"):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / name)
    said = {}
    for line in RUN_FOR_REAL:
        words = words_of(line)
        if "--max_steps" in words:
            words[words.index("--max_steps") + 1] = "2"
        words[0] = os.path.join(BIN, "python")
        result = run(words, cwd=tmp_path)
        assert result.returncode == 0, f"{line}\n{result.stderr[-3000:]}"
        said[words[2]] = result.stdout
        if "runs/alone" in line and not (tmp_path / "runs" / "train").exists():
            os.symlink("alone", tmp_path / "runs" / "train")  # the run the later lines read
    assert "finished at step 2" in said["hvd_cifar.train"]
    assert "are the same as the recorded run's" in said["hvd_cifar.rerun"]
    assert "precision @ 1 = " in said["hvd_cifar.evaluate"]
    assert (tmp_path / "exported" / "saved_model.pb").exists()
    assert said["hvd_cifar.predict"].startswith("cat.jpg: ")
    assert "Recommendation with 32 GPUs: " in said["hvd_cifar.plan"]

"""The launch scripts' shared pieces (launch/common.sh) and the Makefile's variables, without
starting a job: make -n prints what it would run."""
import os
import subprocess

import pytest

from helpers import REPO_ROOT

COMMON = os.path.join(REPO_ROOT, "launch", "common.sh")


def sourced(script, env=None):
    return subprocess.run(["bash", "-c", f"source {COMMON}; {script}"], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=REPO_ROOT)


def test_one_hostfile_parser_reads_every_spelling(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# the cluster\n10.0.0.5 slots=8\n\n  node2:4   # a comment\n"
                        "node3\nnode4 max_slots=9 slots=2\n")
    result = sourced(f"hostfile_entries {hostfile}; total_slots {hostfile}; "
                     f"printf 'a:3\\nb:1\\n' | total_slots")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["10.0.0.5 8", "node2 4", "node3 1", "node4 2",
                                          "15", "4"]


def test_the_controller_is_mpi_unless_asked_and_a_wrong_one_is_one_line():
    assert sourced("echo $controller", {"HVD_CONTROLLER": ""}).stdout.strip() == "mpi"
    assert sourced("echo $controller", {"HVD_CONTROLLER": "gloo"}).stdout.strip() == "gloo"
    wrong = sourced("echo $controller", {"HVD_CONTROLLER": "nccl"})
    assert wrong.returncode == 2
    assert wrong.stderr.strip() == ("hvd_cifar: error: HVD_CONTROLLER must be mpi or gloo, "
                                    "got 'nccl'")


def test_one_variable_names_the_environment_and_the_hosts_interpreter(tmp_path):
    both = sourced("echo $bin $host_python", {"HVD_CIFAR_VENV": str(tmp_path / "env"),
                                             "HOST_PYTHON": ""})
    assert both.stdout.split() == [f"{tmp_path}/env/bin", f"{tmp_path}/env/bin/python"]
    chosen = sourced("echo $host_python", {"HOST_PYTHON": "/opt/py/bin/python3"})
    assert chosen.stdout.strip() == "/opt/py/bin/python3"


@pytest.mark.parametrize("given, steps", [([], "10000"), (["STEPS=500"], "500")])
def test_make_reproduce_takes_steps_from_the_command_line(given, steps):
    result = subprocess.run(["make", "-n", "--no-print-directory", "reproduce",
                             "DATA=images.tar.gz", *given], capture_output=True, text=True,
                            cwd=REPO_ROOT, env={**os.environ, "MAKEFLAGS": ""})
    assert result.returncode == 0, result.stderr
    assert f"STEPS={steps} bash launch/reproduce.sh images.tar.gz" in result.stdout

"""Input that must not be trusted: unreadable data, class folders that are links, data that
check passes and training refuses, reads without a bound, and the tracebacks that were left."""
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from helpers import (BIN, assert_one_line_error, horovodrun, python_module, run,
                     write_cifar_dir)

from hvd_cifar.data import records


def without_file_override():
    """The command prefix under which a file of mode 000 is unreadable: nothing for a user,
    and for root the capabilities that override file modes dropped."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("root without setpriv (util-linux): cannot drop the override of file modes")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


@pytest.fixture
def unreadable_data(tmp_path):
    write_cifar_dir(str(tmp_path / "data"))
    path = tmp_path / "data" / records.BATCHES_DIR / "data_batch_3.bin"
    path.chmod(0)
    yield tmp_path / "data", path
    path.chmod(0o644)


def test_an_unreadable_batch_file_is_one_line_in_train_on_every_rank(unreadable_data,
                                                                      tmp_path):
    data_dir, path = unreadable_data
    command = without_file_override() + [
        os.path.join(BIN, "horovodrun"), "-np", "2", "--gloo", sys.executable, "-m",
        "hvd_cifar.train", "--data_dir", str(data_dir), "--train_dir", str(tmp_path / "run"),
        "--max_steps", "2", "--batch_size", "16", "--no_download"]
    result = run(command)
    assert_one_line_error(result, f"{path}: batch file cannot be read (Permission denied)",
                          launcher=True)
    assert "PermissionError" not in result.stderr + result.stdout


def test_an_unreadable_batch_file_is_one_line_in_evaluate_and_check(unreadable_data, trained):
    data_dir, path = unreadable_data
    path_test = data_dir / records.BATCHES_DIR / "test_batch.bin"
    path_test.chmod(0)
    try:
        evaluate = run(without_file_override() + [
            sys.executable, "-m", "hvd_cifar.evaluate", "--data_dir", str(data_dir),
            "--checkpoint_dir", str(trained[1]), "--eval_dir", str(data_dir.parent / "eval"),
            "--run_once"])
        assert_one_line_error(evaluate, f"{path_test}: batch file cannot be read "
                              "(Permission denied)")
        check = run(without_file_override() + [
            sys.executable, "-m", "hvd_cifar.check", "--data_dir", str(data_dir),
            "--no_download", "--step_seconds", "1"])
        assert check.returncode != 0, check.stdout
        assert "Traceback" not in check.stderr and "PermissionError" not in check.stderr
        data_lines = [line for line in check.stdout.splitlines() if line.startswith("data")]
        assert len(data_lines) == 1 and "FAIL" in data_lines[0], check.stdout
        assert "cannot be read (Permission denied)" in data_lines[0]
    finally:
        path_test.chmod(0o644)


def data_row(check):
    """check's data row (without a launcher's rank tag)."""
    lines = [re.sub(r"^\[[\d,]+\]<stdout>:", "", line) for line in check.stdout.splitlines()]
    rows = [line for line in lines if line.startswith("data ")]
    assert len(rows) == 1, check.stdout + check.stderr
    return rows[0]


def test_check_fails_missing_data_that_training_would_not_download(tmp_path):
    check = horovodrun(2, "gloo", "hvd_cifar.check", "--data_dir", tmp_path / "missing",
                       "--no_download", "--step_seconds", 1)
    assert check.returncode != 0, check.stdout
    assert "FAIL" in data_row(check) and "--no_download is set" in data_row(check)
    assert "verdict: fail" in check.stdout


def test_check_fails_an_archive_that_training_would_refuse(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cifar-10-binary.tar.gz").write_bytes(os.urandom(1000))
    check = python_module("hvd_cifar.check", "--data_dir", tmp_path / "data", "--step_seconds", 1)
    assert check.returncode != 0, check.stdout
    assert "FAIL" in data_row(check) and "has sha256" in data_row(check), data_row(check)


@pytest.mark.parametrize("value, problem", [("", "must be a sha256 of 64 hex digits"),
                                            ("abc", "must be a sha256 of 64 hex digits")])
def test_a_data_sha256_that_is_not_one_is_refused(value, problem):
    from helpers import in_process
    from hvd_cifar import train
    assert_one_line_error(in_process(train.main, "--data_sha256", value), "--data_sha256",
                          problem, status=2)


def test_a_data_sha256_in_capitals_matches(tmp_path):
    from hvd_cifar.data import download
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"x")
    download.check_sha256(str(archive), download.file_sha256(str(archive)).upper())

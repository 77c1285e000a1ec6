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

from helpers import (BIN, ENV, REPO_ROOT, assert_one_line_error, horovodrun, python_module, run,
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


# ---------------------------------------------------------------------------------------------
# convert: class folders that are links, links in archives, reads without a bound

def write_png(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def image_tree(root, classes=("cat", "dog", "ship"), per_class=3):
    for name in classes:
        for i in range(per_class):
            write_png(root / "train" / name / f"{i}.png", seed=i)
    return root


def test_convert_follows_a_class_folder_that_is_a_link_and_says_so(tmp_path):
    source = image_tree(tmp_path / "src", classes=("dog", "ship"))
    image_tree(tmp_path / "ext", classes=("cat",))
    (source / "train" / "cat").symlink_to(tmp_path / "ext" / "train" / "cat")
    result = python_module("hvd_cifar.data", "convert", source, tmp_path / "out",
                           "--test_fraction", "0.34")
    assert result.returncode == 0, result.stderr
    assert f"train/cat is a link to {tmp_path}/ext/train/cat; its images are read" in \
        result.stderr
    names = (tmp_path / "out" / records.BATCHES_DIR / records.META_FILE).read_text().split()
    assert names == ["cat", "dog", "ship"]
    assert "6 training and 3 test records" in result.stdout


def test_convert_refuses_a_class_folder_it_cannot_read(tmp_path):
    source = image_tree(tmp_path / "src")
    hidden = source / "train" / "cat"
    hidden.chmod(0)
    try:
        result = run(without_file_override() + [
            sys.executable, "-m", "hvd_cifar.data", "convert", str(source), str(tmp_path / "out"),
            "--test_fraction", "0.34"])
    finally:
        hidden.chmod(0o755)
    assert_one_line_error(result, f"{hidden}: cannot be read (Permission denied)")
    assert not (tmp_path / "out" / records.BATCHES_DIR).exists()


def test_convert_refuses_link_entries_of_an_archive(tmp_path):
    source = image_tree(tmp_path / "src")
    archive = tmp_path / "images.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(source / "train", arcname="train")
        link = tarfile.TarInfo("train/cat/again.png")
        link.type, link.linkname = tarfile.LNKTYPE, "train/cat/0.png"
        tar.addfile(link)
    result = python_module("hvd_cifar.data", "convert", archive, tmp_path / "out",
                           "--test_fraction", "0.34")
    assert_one_line_error(result, "holds 1 link entry (train/cat/again.png), which are not read")


def test_convert_refuses_an_oversized_image_before_reading_it(tmp_path):
    source = image_tree(tmp_path / "src")
    archive = tmp_path / "images.tar.gz"
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as f:
        f.truncate(65 << 20)  # a sparse file: its size, not its bytes, is what is refused
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "train", arcname="train")
        tar.add(huge, arcname="train/cat/huge.png")
    result = python_module("hvd_cifar.data", "convert", archive, tmp_path / "out",
                           "--test_fraction", "0.34")
    assert result.returncode == 1, result.stderr
    assert "bad image: train/cat/huge.png (68,157,440 bytes is more than an image may have" in \
        result.stderr
    assert "Traceback" not in result.stderr


def test_convert_does_not_read_a_fifo_or_wait_for_it(tmp_path):
    source = image_tree(tmp_path / "src")
    os.mkfifo(source / "train" / "cat" / "fifo.png")
    result = python_module("hvd_cifar.data", "convert", source, tmp_path / "out",
                           "--test_fraction", "0.34", timeout=120)
    assert result.returncode == 1, result.stderr
    assert "bad image: train/cat/fifo.png (not a regular file" in result.stderr


def test_predict_does_not_read_a_device_and_answers_a_file_named_twice(tmp_path):
    image = tmp_path / "a.png"
    write_png(image)
    result = python_module("hvd_cifar.predict", "/dev/zero", image, image, timeout=120)
    assert result.returncode == 1
    assert error_lines_of(result) == ["hvd_cifar: error: /dev/zero: not a regular file (a FIFO, "
                                      "device or folder is not read)"]
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == [str(image)] * 2


def error_lines_of(result):
    return [line for line in result.stderr.splitlines() if "hvd_cifar: error:" in line]


def test_a_converted_folder_follows_the_umask(tmp_path):
    source = image_tree(tmp_path / "src")
    for umask, mode in ((0o077, 0o700), (0o022, 0o755)):
        out = tmp_path / f"out{umask:o}"
        result = subprocess.run([sys.executable, "-m", "hvd_cifar.data", "convert", str(source),
                                 str(out), "--test_fraction", "0.34"], capture_output=True,
                                text=True, env=ENV, cwd=REPO_ROOT,
                                preexec_fn=lambda: os.umask(umask))
        assert result.returncode == 0, result.stderr
        assert stat.S_IMODE((out / records.BATCHES_DIR).stat().st_mode) == mode


def test_two_converts_to_one_folder_at_once_leave_one_whole_result(tmp_path):
    source = image_tree(tmp_path / "src")
    out = tmp_path / "out"
    for _ in range(3):
        converts = [subprocess.Popen([sys.executable, "-m", "hvd_cifar.data", "convert",
                                      str(source), str(out), "--test_fraction", "0.34"],
                                     env=ENV, cwd=REPO_ROOT, text=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE) for _ in range(2)]
        outcomes = [(c.wait(timeout=120), *c.communicate()) for c in converts]
        assert "Traceback" not in "".join(err for _, _, err in outcomes)
        for status, _, err in outcomes:
            if status:
                assert len(error_lines_of(subprocess.CompletedProcess([], status, "", err))) == 1
        assert records.split_files(str(out / records.BATCHES_DIR), "train")[1] == 6
        shutil.rmtree(out)


# ---------------------------------------------------------------------------------------------
# Flags and files that were tracebacks

def test_a_negative_convert_seed_is_one_line(tmp_path):
    from helpers import in_process
    from hvd_cifar.data import __main__ as data_command
    assert_one_line_error(in_process(data_command.main, "convert", tmp_path, tmp_path / "out",
                                     "--seed", "-1"), "--seed", "from 0 to", status=2)


@pytest.mark.parametrize("value", ["99999999999999999999", "2147483648", "65537"])
def test_a_batch_size_no_memory_could_hold_is_refused_before_anything_is_made(tmp_path,
                                                                             value):
    from helpers import in_process
    from hvd_cifar import evaluate, train
    result = in_process(train.main, "--batch_size", value, "--train_dir", tmp_path / "run")
    assert_one_line_error(result, "--batch_size", "from 1 to 65536", status=2)
    assert not (tmp_path / "run").exists()
    assert_one_line_error(in_process(evaluate.main, "--batch_size", value), "--batch_size",
                          status=2)


def test_a_timeline_under_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("mine")
    result = python_module("hvd_cifar.train", "--synthetic", "--train_dir", tmp_path / "run",
                           "--max_steps", 1, "--horovod_timeline", tmp_path / "file" / "t.json")
    assert_one_line_error(result, f"--horovod_timeline {tmp_path}/file/t.json: cannot make its "
                          f"folder {tmp_path}/file")
    assert (tmp_path / "file").read_text() == "mine"


def test_predict_refuses_a_saved_model_that_export_did_not_write(tmp_path):
    import tensorflow as tf
    tf.saved_model.save(tf.Module(), str(tmp_path / "other"))
    image = tmp_path / "a.png"
    write_png(image)
    result = python_module("hvd_cifar.predict", "--checkpoint_dir", tmp_path / "other", image)
    assert_one_line_error(result, f"{tmp_path}/other: a SavedModel that hvd_cifar.export did "
                          "not write")


def test_the_classifier_takes_an_empty_batch():
    import tensorflow as tf
    from hvd_cifar import classifier, model
    probabilities = classifier.classifier(model.inference())(tf.zeros([0, 32, 32, 3], tf.uint8))
    assert probabilities.shape == (0, records.NUM_CLASSES)


def test_evaluate_without_data_does_not_name_a_flag_it_lacks(tmp_path, trained):
    result = python_module("hvd_cifar.evaluate", "--data_dir", tmp_path / "none",
                           "--checkpoint_dir", trained[1], "--eval_dir", tmp_path / "eval",
                           "--run_once")
    line = assert_one_line_error(result, "evaluate does not download")
    assert "--no_download" not in line


def test_a_rate_that_only_meets_the_cap_is_not_said_to_be_capped():
    from hvd_cifar.replica import scaled_learning_rate
    assert scaled_learning_rate(0.1, 3, "linear", 0.3) == (0.3, "linear scaling: 0.1 x 3")
    rate, rule = scaled_learning_rate(0.1, 4, "linear", 0.3)
    assert rate == 0.3 and rule.endswith("= 0.4, capped by --max_lr 0.3")


def test_make_train_takes_folders_with_spaces(tiny_data, tmp_path):
    data = tmp_path / "my data"
    shutil.copytree(tiny_data, data)
    train_dir = tmp_path / "my runs" / "a b"
    result = run(["make", "--no-print-directory", "train", f"DATA_DIR={data}",
                  f"TRAIN_DIR={train_dir}", "NP=1", "STEPS=2",
                  "TRAIN_FLAGS=--batch_size 16 --no_download"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (train_dir / "ckpt-2.index").exists() and (train_dir / "eval.json").exists()

"""Expected failures end as one `hvd_cifar: error:` line naming the flag or file, no traceback."""
import os

import pytest

from helpers import assert_one_line_error, in_process, python_module, set_label, write_cifar_dir
from hvd_cifar import train


@pytest.mark.parametrize("value, fragment", [
    ("0", "argument --batch_size: must be an integer from 1 to 65536, got '0'"),
    ("-3", "argument --batch_size: must be an integer from 1 to 65536, got '-3'"),
    ("many", "argument --batch_size: must be an integer from 1 to 65536, got 'many'"),
])
def test_a_bad_batch_size_is_named(value, fragment):
    result = in_process(train.main, "--synthetic", "--batch_size", value)
    assert_one_line_error(result, fragment, status=2)


def test_an_unknown_flag_is_named():
    result = in_process(train.main, "--batchsize", "8")
    assert_one_line_error(result, "unrecognized arguments: --batchsize 8", status=2)


def test_a_bad_choice_is_named():
    result = in_process(train.main, "--lr_scaling", "cubic")
    assert_one_line_error(result, "argument --lr_scaling", "invalid choice: 'cubic'", status=2)


def test_help_documents_every_flag_with_its_default():
    result = in_process(train.main, "--help")
    assert result.returncode == 0
    for text in ("--data_dir", "--train_dir", "--max_steps", "--batch_size", "--lr ",
                 "--warmup_epochs", "--checkpoint_every_steps", "--seed", "--synthetic",
                 "--fresh", "--use_fp16", "--fp16_allreduce", "--backward_passes_per_step",
                 "--log_frequency", "(default: 128)", "(default: 0.1)"):
        assert text in result.stdout, text


@pytest.mark.parametrize("empty", [False, True])
def test_missing_data_with_downloads_off_names_the_folder(tmp_path, empty):
    data_dir = tmp_path / "data"
    if empty:
        data_dir.mkdir()
    result = python_module("hvd_cifar.train", "--data_dir", data_dir, "--train_dir",
                           tmp_path / "run", "--no_download")
    assert_one_line_error(result, f"{data_dir}/cifar-10-batches-bin not found", status=1)
    # nothing is left behind: no folder made, no half-extracted files
    assert (list(data_dir.iterdir()) == []) if empty else not data_dir.exists()


def test_an_unreachable_download_says_how_to_provide_the_data(tmp_path):
    result = python_module("hvd_cifar.train", "--data_dir", tmp_path / "none", "--train_dir",
                           tmp_path / "run", "--data_url", "http://127.0.0.1:9/x.tar.gz")
    assert_one_line_error(result, "cannot download http://127.0.0.1:9/x.tar.gz",
                          "--data_url file:///path/to/cifar-10-binary.tar.gz", status=1)


def test_a_truncated_batch_file_stops_training_with_its_name(tmp_path):
    batches_dir, _ = write_cifar_dir(str(tmp_path))
    with open(os.path.join(batches_dir, "data_batch_2.bin"), "r+b") as f:
        f.truncate(1000)
    result = python_module("hvd_cifar.train", "--data_dir", tmp_path, "--train_dir",
                           tmp_path / "run", "--no_download")
    assert_one_line_error(result, "data_batch_2.bin: 1000 bytes is not a whole number",
                          status=1)


def test_a_label_out_of_range_stops_training_with_its_name(tmp_path):
    batches_dir, _ = write_cifar_dir(str(tmp_path))
    set_label(os.path.join(batches_dir, "data_batch_1.bin"), record=0, label=200)
    result = python_module("hvd_cifar.train", "--data_dir", tmp_path, "--train_dir",
                           tmp_path / "run", "--no_download")
    assert_one_line_error(result, "data_batch_1.bin: record 0 has label 200", status=1)


def test_a_batch_larger_than_the_data_is_named(tmp_path):
    write_cifar_dir(str(tmp_path), train_per_file=10)
    result = python_module("hvd_cifar.train", "--data_dir", tmp_path, "--train_dir",
                           tmp_path / "run", "--no_download", "--batch_size", "64")
    assert_one_line_error(result, "50 training records over 1 rank", "--batch_size 64",
                          status=1)


def test_an_unwritable_train_dir_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = python_module("hvd_cifar.train", "--synthetic", "--train_dir", blocker / "run")
    assert_one_line_error(result, f"--train_dir {blocker}/run is not writable", status=1)


def test_evaluate_without_a_checkpoint_names_the_folder(tmp_path):
    write_cifar_dir(str(tmp_path))
    result = python_module("hvd_cifar.evaluate", "--data_dir", tmp_path, "--checkpoint_dir",
                           tmp_path / "empty", "--run_once")
    assert_one_line_error(result, f"--checkpoint_dir {tmp_path}/empty holds no checkpoint",
                          status=1)

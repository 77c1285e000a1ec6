"""Read-only runs, images as they come, and the quieter mistakes: each is said, none is lost."""
import io
import json
import os
import select
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from hvd_cifar import train
from hvd_cifar.data import images
from helpers import ENV, REPO_ROOT, assert_one_line_error, in_process, python_module

TRAIN_FLAGS = ["--batch_size", "8", "--no_download", "--log_frequency", "2"]


def unwritable_for_root(path):
    """Root ignores permission bits: a read-only bind mount makes the folder really read-only."""
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)


def test_evaluate_writes_everything_to_eval_dir_and_asks_for_it_on_a_read_only_run(
        trained, tmp_path):
    data_dir, train_dir, _, _ = trained
    unwritable_for_root(train_dir)
    try:
        before = sorted(os.listdir(train_dir))
        refused = python_module("hvd_cifar.evaluate", "--data_dir", data_dir,
                                "--checkpoint_dir", train_dir, "--run_once")
        assert_one_line_error(refused, f"--checkpoint_dir {train_dir} is not writable",
                              "pass --eval_dir", status=1)
        assert "precision @ 1" not in refused.stdout
        eval_dir = tmp_path / "eval"
        result = python_module("hvd_cifar.evaluate", "--data_dir", data_dir,
                               "--checkpoint_dir", train_dir, "--run_once", "--eval_dir",
                               eval_dir)
        assert result.returncode == 0, result.stderr
        assert json.loads((eval_dir / "eval.json").read_text())["global_step"] == 4
        assert (eval_dir / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
        assert sorted(os.listdir(train_dir)) == before
    finally:
        subprocess.run(["umount", str(train_dir)], check=True)


def test_export_weights_refuses_an_existing_file_and_names_an_unwritable_path(trained, tmp_path):
    _, train_dir, _, _ = trained
    existing = tmp_path / "mine.h5"
    existing.write_bytes(b"a user's file")
    refused = python_module("hvd_cifar.export", "--checkpoint_dir", train_dir, "--weights",
                            existing)
    assert_one_line_error(refused, f"--weights {existing} already exists", status=1)
    assert existing.read_bytes() == b"a user's file"
    nowhere = tmp_path / "missing" / "w.h5"
    failed = python_module("hvd_cifar.export", "--checkpoint_dir", train_dir, "--weights",
                           nowhere)
    assert_one_line_error(failed, f"--weights {nowhere}", status=1)
    assert not nowhere.parent.exists()


def encoded(array, mode=None, **save):
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def test_16_bit_grayscale_is_scaled_to_8_bits_not_clipped():
    eight = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
    sixteen = eight.astype(np.uint16) * 257
    decoded = images.decode_to_cifar(encoded(sixteen))
    assert decoded.shape == (32, 32, 3) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded[..., 0], eight)
    np.testing.assert_array_equal(decoded, images.decode_to_cifar(encoded(eight)))


def test_palette_and_alpha_images_become_rgb_with_transparency_over_white():
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:16, :, 3] = 255  # the top half opaque red, the bottom half transparent
    decoded = images.decode_to_cifar(encoded(rgba))
    assert tuple(decoded[0, 0]) == (200, 0, 0)
    assert tuple(decoded[31, 0]) == (255, 255, 255)
    palette = Image.fromarray(np.full((32, 32, 3), (10, 20, 30), np.uint8)).convert(
        "P", palette=Image.Palette.ADAPTIVE, colors=4)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    assert tuple(images.decode_to_cifar(buffer.getvalue())[5, 5]) == (10, 20, 30)


def test_a_huge_image_is_refused_in_one_line_before_decoding(tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("L", (8000, 6000)).save(huge)  # 48 megapixels
    result = python_module("hvd_cifar.predict", huge)
    line = assert_one_line_error(result, f"{huge}: 8000x6000", "larger than", status=1)
    assert "40000000" in line.replace(",", "")
    assert "DecompressionBomb" not in result.stderr


@pytest.mark.parametrize("flag", ["--lr", "--max_lr", "--warmup_epochs", "--momentum"])
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_float_flags_refuse_inf_and_nan(flag, value):
    assert_one_line_error(in_process(train.main, "--synthetic", flag, value), flag, value,
                          status=2)


def test_a_resume_says_what_changed_and_a_finished_run_says_so(trained, tmp_path):
    data_dir, _, _, _ = trained
    train_dir = tmp_path / "run"
    args = ["--data_dir", data_dir, "--train_dir", train_dir, *TRAIN_FLAGS]
    assert python_module("hvd_cifar.train", *args, "--max_steps", 4).returncode == 0
    bigger = python_module("hvd_cifar.train", *args, "--max_steps", 6, "--batch_size", 16)
    assert bigger.returncode == 0, bigger.stderr
    assert "resuming with changes: global batch 8 -> 16, steps an epoch 10 -> 5" in bigger.stdout
    done = python_module("hvd_cifar.train", *args, "--max_steps", 6, "--batch_size", 16)
    assert done.returncode == 0, done.stderr
    assert "already at step 6, at or past --max_steps 6: nothing to train" in done.stdout


def test_a_precision_change_on_resume_is_said_or_names_use_fp16(trained, tmp_path):
    data_dir, _, _, _ = trained
    train_dir = tmp_path / "run"
    args = ["--data_dir", data_dir, "--train_dir", train_dir, *TRAIN_FLAGS]
    assert python_module("hvd_cifar.train", *args, "--max_steps", 2).returncode == 0
    # A float32 checkpoint has no loss scale to give a float16 run.
    refused = python_module("hvd_cifar.train", *args, "--max_steps", 4, "--use_fp16")
    assert_one_line_error(refused, "was written without --use_fp16", "drop --use_fp16",
                          status=1)
    fp16_dir = tmp_path / "fp16"
    fp16_args = ["--data_dir", data_dir, "--train_dir", fp16_dir, *TRAIN_FLAGS]
    assert python_module("hvd_cifar.train", *fp16_args, "--max_steps", 2,
                         "--use_fp16").returncode == 0
    # A float16 checkpoint holds float32 weights: a float32 run goes on from it, and says so.
    resumed = python_module("hvd_cifar.train", *fp16_args, "--max_steps", 4)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming with changes: --use_fp16 True -> False" in resumed.stdout


def test_evaluate_says_it_is_waiting_for_checkpoints(trained, tmp_path):
    data_dir, train_dir, _, _ = trained
    process = subprocess.Popen(
        [sys.executable, "-m", "hvd_cifar.evaluate", "--data_dir", str(data_dir),
         "--checkpoint_dir", str(train_dir), "--eval_dir", str(tmp_path),
         "--eval_interval_secs", "600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO_ROOT)
    try:
        # A watcher that never says anything must fail the test, not hang it.
        ready, _, _ = select.select([process.stdout], [], [], 120)
        assert ready, "evaluate said nothing in 120 s"
        first = process.stdout.readline()
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert f"watching {train_dir} for new checkpoints every 600 s" in first


def test_convert_says_which_images_and_class_folders_it_skips(tmp_path):
    source = tmp_path / "src"
    for name in ("cat", "dog"):
        (source / "train" / name).mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(source / "train" / name / "a.png")
    (source / "train" / "bird").mkdir()
    (source / "train" / "dog" / "puppies").mkdir()
    Image.new("RGB", (32, 32)).save(source / "train" / "dog" / "puppies" / "b.png")
    result = python_module("hvd_cifar.data", "convert", source, tmp_path / "out",
                           "--test_fraction", 0.5)
    assert result.returncode == 0, result.stderr
    assert "warning: skipped 1 image outside class folders" in result.stderr
    assert "train/dog/puppies/b.png" in result.stderr
    assert "warning: class folder train/bird holds no images" in result.stderr


def test_more_threads_than_cores_is_warned(tmp_path):
    result = python_module("hvd_cifar.train", "--synthetic", "--max_steps", 1, "--batch_size",
                           4, "--train_dir", tmp_path / "run", "--threads_per_rank", 1000)
    assert result.returncode == 0, result.stderr
    assert f"warning: --threads_per_rank 1000 x 1 rank on this host is more than its " \
           f"{len(os.sched_getaffinity(0))} cores" in result.stdout


def test_a_failed_download_leaves_no_train_dir(tmp_path):
    result = python_module("hvd_cifar.train", "--data_dir", tmp_path / "none", "--train_dir",
                           tmp_path / "run", "--data_url", "http://127.0.0.1:9/x.tar.gz")
    assert_one_line_error(result, "cannot download", status=1)
    assert not (tmp_path / "run").exists()

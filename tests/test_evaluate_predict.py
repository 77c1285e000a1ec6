"""Evaluation (single and distributed), the evaluation loop, predict and export."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import TRAINED_CLASS_NAMES, TRAINED_TEST_RECORDS as NUM_TEST
from hvd_cifar import model as model_lib
from helpers import ENV, REPO_ROOT, assert_one_line_error, horovodrun, python_module, scalars


def predictions_by_hand(train_dir, images):
    """Class indices from the checkpoint's moving averages, with numpy preprocessing."""
    path = tf.train.latest_checkpoint(str(train_dir))
    network = model_lib.inference()
    for i, variable in enumerate(network.trainable_variables):
        variable.assign(tf.train.load_variable(path, f"moving_averages/{i}/.ATTRIBUTES/"
                                                     "VARIABLE_VALUE"))
    centre = images[:, 4:28, 4:28, :].astype(np.float32)
    mean = centre.mean(axis=(1, 2, 3), keepdims=True)
    std = np.maximum(centre.std(axis=(1, 2, 3), keepdims=True), 1 / np.sqrt(24 * 24 * 3))
    return np.argmax(network((centre - mean) / std).numpy(), axis=1)


def evaluate_once(data_dir, train_dir, eval_dir, ranks=1):
    """evaluate --run_once of train_dir, its results in eval_dir (the shared run stays as the
    fixture made it); (the result, eval.json)."""
    args = ("--data_dir", data_dir, "--checkpoint_dir", train_dir, "--eval_dir", eval_dir,
            "--run_once", "--batch_size", 10)
    result = (horovodrun(ranks, "gloo", "hvd_cifar.evaluate", *args) if ranks > 1
              else python_module("hvd_cifar.evaluate", *args))
    assert result.returncode == 0, result.stderr[-3000:]
    return result, json.loads((eval_dir / "eval.json").read_text())


def test_precision_equals_the_accuracy_computed_by_hand(trained, tmp_path):
    data_dir, train_dir, images, labels = trained
    result, summary = evaluate_once(data_dir, train_dir, tmp_path)
    predicted = predictions_by_hand(train_dir, images)
    expected = float(np.mean(predicted == labels))
    assert f"precision @ 1 = {expected:.3f}" in result.stdout
    assert summary["precision_at_1"] == pytest.approx(expected)
    assert summary["num_examples"] == NUM_TEST and summary["global_step"] == 4
    assert summary["class_names"] == TRAINED_CLASS_NAMES
    matrix = np.array(summary["confusion_matrix"])
    expected_matrix = np.zeros((10, 10), int)
    np.add.at(expected_matrix, (labels, predicted), 1)
    np.testing.assert_array_equal(matrix, expected_matrix)
    for c, name in enumerate(TRAINED_CLASS_NAMES):
        in_class = labels == c
        if in_class.any():
            assert summary["per_class_recall"][name] == pytest.approx(
                np.mean(predicted[in_class] == c))
    with Image.open(tmp_path / "confusion_matrix.png") as png:
        assert png.format == "PNG" and png.width > 300


def test_two_ranks_evaluate_every_record_once_and_agree_with_one_process(trained, tmp_path):
    data_dir, train_dir, _, _ = trained
    _, single = evaluate_once(data_dir, train_dir, tmp_path / "one")
    result, distributed = evaluate_once(data_dir, train_dir, tmp_path / "two", ranks=2)
    assert distributed["num_examples"] == NUM_TEST
    assert distributed["confusion_matrix"] == single["confusion_matrix"]
    assert distributed["precision_at_1"] == single["precision_at_1"]
    assert result.stdout.count("precision @ 1 = ") == 1  # rank 0 alone reports


def test_the_loop_evaluates_each_new_checkpoint(trained, tmp_path):
    data_dir, _, _, _ = trained
    train_dir = tmp_path / "run"
    args = ("--data_dir", data_dir, "--train_dir", train_dir, "--batch_size", 8,
            "--no_download")
    assert python_module("hvd_cifar.train", *args, "--max_steps", 2).returncode == 0
    loop = subprocess.Popen([sys.executable, "-m", "hvd_cifar.evaluate", "--data_dir",
                             str(data_dir), "--checkpoint_dir", str(train_dir),
                             "--eval_interval_secs", "1"], env=ENV, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def evaluated_steps():
            return set(scalars(str(train_dir / "eval"), "precision_at_1"))

        deadline = time.monotonic() + 120
        while evaluated_steps() != {2} and time.monotonic() < deadline:
            time.sleep(0.5)
        assert evaluated_steps() == {2}
        assert python_module("hvd_cifar.train", *args, "--max_steps", 4).returncode == 0
        while evaluated_steps() != {2, 4} and time.monotonic() < deadline:
            time.sleep(0.5)
        assert evaluated_steps() == {2, 4}
    finally:
        loop.send_signal(signal.SIGINT)
        loop.communicate(timeout=60)
    assert loop.returncode == 128 + signal.SIGINT


def write_images(folder, images):
    """A 32x32 PNG and a 64x64 JPEG of test images, and a text file named like an image."""
    folder.mkdir()
    Image.fromarray(images[0]).save(folder / "first.png")
    Image.fromarray(images[1]).resize((64, 64)).save(folder / "second.jpg", quality=95)
    (folder / "broken.png").write_text("this is not an image")
    return [folder / "first.png", folder / "second.jpg", folder / "broken.png"]


def test_predict_classifies_good_images_and_names_the_bad_one(trained, tmp_path):
    data_dir, train_dir, images, _ = trained
    first, second, broken = write_images(tmp_path / "images", images)
    result = python_module("hvd_cifar.predict", "--checkpoint_dir", train_dir, "--data_dir",
                           data_dir, first, second, broken)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    expected = TRAINED_CLASS_NAMES[predictions_by_hand(train_dir, images[:1])[0]]
    assert lines[0].startswith(f"{first}: {expected} (")
    assert lines[1].startswith(f"{second}: class")
    assert len(lines) == 2
    assert_one_line_error(result, f"{broken}: not a readable image")


def test_predict_top_k_and_json(trained, tmp_path):
    data_dir, train_dir, images, _ = trained
    first, second, _ = write_images(tmp_path / "images", images)
    result = python_module("hvd_cifar.predict", "--checkpoint_dir", train_dir, "--data_dir",
                           data_dir, "--top_k", 3, "--json", first, second)
    assert result.returncode == 0, result.stderr
    ranked = json.loads(result.stdout)
    assert list(ranked) == [str(first), str(second)]
    for entries in ranked.values():
        probabilities = [e["probability"] for e in entries]
        assert len(entries) == 3 and probabilities == sorted(probabilities, reverse=True)
        assert all(e["label"] in TRAINED_CLASS_NAMES for e in entries) and sum(probabilities) <= 1


def test_the_exported_savedmodel_gives_the_checkpoints_probabilities(trained, tmp_path):
    data_dir, train_dir, images, _ = trained
    out = tmp_path / "exported"
    result = python_module("hvd_cifar.export", "--checkpoint_dir", train_dir, "--out", out,
                           "--data_dir", data_dir)
    assert result.returncode == 0, result.stderr
    assert "SavedModel of step 4" in result.stdout
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    for batch in (1, 5):  # any batch size
        outputs = serve(images=tf.constant(images[:batch]))
        assert outputs["probabilities"].shape == (batch, 10)
        np.testing.assert_allclose(outputs["probabilities"].numpy().sum(axis=1), 1, rtol=1e-5)
    assert outputs["label_name"].numpy()[0].decode() in TRAINED_CLASS_NAMES

    paths = write_images(tmp_path / "images", images)[:2]
    from_checkpoint, from_savedmodel = (
        json.loads(python_module("hvd_cifar.predict", "--checkpoint_dir", source, "--data_dir",
                                 data_dir, "--top_k", 10, "--json", *paths).stdout)
        for source in (train_dir, out))
    for path in map(str, paths):
        by_label = {e["label"]: e["probability"] for e in from_checkpoint[path]}
        for entry in from_savedmodel[path]:
            assert entry["probability"] == pytest.approx(by_label[entry["label"]], abs=1e-6)

    again = python_module("hvd_cifar.export", "--checkpoint_dir", train_dir, "--out", out)
    assert_one_line_error(again, f"--out {out} already exists", status=1)

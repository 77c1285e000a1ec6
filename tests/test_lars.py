"""Layer-wise adaptive rates (--optimizer lars): the step of each weight matrix against a hand
computation, two ranks against one process on the union batch, and a resume that changes the
optimizer; the measurement tool tools/layer_steps.py against the checkpoint it reads. (Exact
resume with LARS: test_train_distributed.py.)"""
import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from helpers import assert_one_line_error, in_process, one_step, python_module, run, scalars
from hvd_cifar import train as train_module

TRUST = 0.001  # tests/one_step.py's default --trust_coefficient


@pytest.mark.parametrize("output_layer", ["trust", "global"])
def test_a_lars_step_scales_each_weight_matrix_by_its_trust_ratio_and_biases_by_nothing(
        tmp_path, output_layer):
    step = one_step(tmp_path / "lars.npz", 1, 16, 0.1, optimizer="lars",
                    lars_output_layer=output_layer)
    rate = float(step["learning_rate"])
    names = [str(step[k]) for k in sorted((k for k in step.files if k.startswith("name_")),
                                          key=lambda k: int(k.split("_")[1]))]
    assert len(names) == 10
    # --lars_output_layer global: the output layer's matrix steps as the biases do.
    global_rate = {"softmax_linear/kernel:0"} if output_layer == "global" else set()
    for i, name in enumerate(names):
        before, after, gradient = (step[f"{what}_{i}"] for what in ("before", "after",
                                                                       "gradient"))
        if before.ndim > 1 and name not in global_rate:
            ratio = TRUST * np.linalg.norm(before) / np.linalg.norm(gradient)
            assert "kernel" in name
        else:
            ratio = 1.0
            assert "bias" in name or name in global_rate
        np.testing.assert_allclose(after, before - rate * ratio * gradient, rtol=1e-4,
                                   atol=1e-7, err_msg=name)
    # Layer-wise: every kernel moves by the same share of its own norm, rate x trust, whatever
    # its gradient's scale.
    kernels = [i for i, name in enumerate(names) if "kernel" in name and name not in global_rate]
    assert len(kernels) == (5 if output_layer == "trust" else 4)
    moved = [np.linalg.norm(step[f"after_{i}"] - step[f"before_{i}"]) /
             np.linalg.norm(step[f"before_{i}"]) for i in kernels]
    np.testing.assert_allclose(moved, rate * TRUST, rtol=1e-3)


def test_two_lars_ranks_take_the_step_of_one_process_on_the_union_batch(tmp_path):
    distributed = one_step(tmp_path / "two.npz", 2, 8, 0.05, optimizer="lars")
    single = one_step(tmp_path / "one.npz", 1, 16, 0.1, optimizer="lars")
    for key in (k for k in single.files if k.startswith("after_")):
        np.testing.assert_array_equal(single[key.replace("after", "before")],
                                      distributed[key.replace("after", "before")])
        np.testing.assert_allclose(distributed[key], single[key], rtol=1e-5, atol=1e-6)


def test_resuming_with_another_optimizer_is_refused_and_new_lars_settings_are_said(
        tmp_path):
    train_dir = tmp_path / "run"

    def train(max_steps, *flags):
        return python_module("hvd_cifar.train", "--synthetic", "--batch_size", 8,
                             "--log_frequency", 1, "--train_dir", train_dir, "--max_steps",
                             max_steps, *flags)

    first = train(2, "--optimizer", "lars")
    assert first.returncode == 0, first.stderr
    # One worker: LARS's defaults are the trust coefficient 0.00125 x 1 and the output layer
    # at the global rate.
    assert ("optimizer: LARS, trust coefficient 0.00125, momentum 0.9, the output layer's "
            "matrix at the global rate") in first.stdout
    files = sorted(os.listdir(train_dir))
    assert_one_line_error(train(4), f"--train_dir {train_dir} was trained with --optimizer lars",
                          "resume it with --optimizer lars, or start over with --fresh",
                          status=1)
    assert sorted(os.listdir(train_dir)) == files
    resumed = train(4, "--optimizer", "lars", "--trust_coefficient", 0.002,
                    "--lars_output_layer", "trust")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout and "finished at step 4" in resumed.stdout
    assert ("resuming with changes: --trust_coefficient 0.00125 -> 0.002, "
            "--lars_output_layer global -> trust\n") in resumed.stdout


@pytest.mark.parametrize("passes, optimizer, first_rate", [
    (4, "SGD, momentum 0", 0.1),
    (8, "LARS, trust coefficient 0.01, momentum 0.9, the output layer's matrix at the global "
        "rate", 0.3 / 8)])
def test_the_optimizer_follows_the_global_batch_and_rank_0_says_which(
        tmp_path, passes, optimizer, first_rate):
    # W = 1 rank x passes: SGD below 8 workers' batches, LARS from 8 on.
    result = python_module("hvd_cifar.train", "--synthetic", "--batch_size", 2,
                           "--backward_passes_per_step", passes, "--log_frequency", 1,
                           "--train_dir", tmp_path, "--max_steps", 2)
    assert result.returncode == 0, result.stderr
    assert f"hvd_cifar: optimizer: {optimizer}\n" in result.stdout
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["optimizer"] == ("lars" if passes == 8 else "sgd")
    assert record["trust_coefficient"] == (0.01 if passes == 8 else None)
    # The first update's rate: one worker's (SGD) or the capped peak's share of one (LARS).
    assert scalars(str(tmp_path), "learning_rate")[1] == pytest.approx(first_rate)


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_a_bad_trust_coefficient_is_named(value):
    assert_one_line_error(in_process(train_module.main, "--trust_coefficient", value),
                          "--trust_coefficient", status=2)


def test_layer_steps_tool_reports_each_layer_of_a_checkpoint(trained):
    # Under --lars_output_layer global: four matrices step by the trust ratio, one does not.
    data_dir, train_dir = trained[:2]
    checkpoint = os.path.join(train_dir, "ckpt-4")
    result = run([sys.executable, os.path.join("tools", "layer_steps.py"), checkpoint,
                  "--data_dir", str(data_dir), "--sgd_lr", "0.3", "--lars_lr", "2",
                  "--trust_coefficient", "0.01", "--lars_output_layer", "global",
                  "--batch_size", "8"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("step 4, loss ")
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in result.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| variable")]
    layers = ["conv1", "conv2", "local3", "local4", "softmax_linear"]
    assert [row[0] for row in rows] == [f"{layer}/{kind}" for layer in layers
                                        for kind in ("kernel", "bias")]
    # The raw weights of the checkpoint (not its moving averages), read here by their keys.
    reader = tf.train.load_checkpoint(checkpoint)
    for index, layer in enumerate(layers):
        for kind in ("kernel", "bias"):
            name, weight_norm, gradient_norm, sgd_step, lars_step = rows.pop(0)
            weights = reader.get_tensor(
                f"model/layer_with_weights-{index}/{kind}/.ATTRIBUTES/VARIABLE_VALUE")
            assert float(weight_norm) == pytest.approx(np.linalg.norm(weights), abs=1e-3), name
            assert float(gradient_norm) > 0, name
            # Within the rounding of the printed norms (3 and 4 decimals).
            rounding = 0.0005 / float(weight_norm) + 0.00005 / float(gradient_norm)
            assert float(sgd_step) == pytest.approx(
                0.3 * float(gradient_norm) / float(weight_norm), rel=rounding, abs=1e-4), name
            at_global_rate = kind == "bias" or layer == "softmax_linear"
            assert lars_step == ("(global rate)" if at_global_rate else "0.0200"), name

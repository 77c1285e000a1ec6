"""The tutorial network: shapes, parameter count, initializers, weight decay, fp16."""
import numpy as np
import pytest
import tensorflow as tf

from hvd_cifar import model as model_lib
from helpers import python_module

EXPECTED_SHAPES = {
    "conv1": (None, 24, 24, 64), "pool1": (None, 12, 12, 64), "norm1": (None, 12, 12, 64),
    "conv2": (None, 12, 12, 64), "norm2": (None, 12, 12, 64), "pool2": (None, 6, 6, 64),
    "local3": (None, 384), "local4": (None, 192), "softmax_linear": (None, 10),
}


@pytest.fixture(scope="module")
def network():
    tf.random.set_seed(0)
    return model_lib.inference()


def test_layers_have_the_tutorial_output_shapes(network):
    for name, shape in EXPECTED_SHAPES.items():
        assert tuple(network.get_layer(name).output.shape) == shape, name


def test_parameter_count_is_the_tutorials(network):
    assert network.count_params() == 1_068_298 == model_lib.NUM_PARAMETERS


def test_biases_and_initial_weight_scales_are_the_tutorials(network):
    biases = {"conv1": 0.0, "conv2": 0.1, "local3": 0.1, "local4": 0.1, "softmax_linear": 0.0}
    stddevs = {"conv1": 5e-2, "conv2": 5e-2, "local3": 0.04, "local4": 0.04,
               "softmax_linear": 1 / 192}
    for name, bias in biases.items():
        kernel, bias_values = network.get_layer(name).get_weights()
        np.testing.assert_allclose(bias_values, bias)
        # Truncated at 2 stddev: nothing beyond, and the spread is ~0.88 stddev.
        assert np.abs(kernel).max() <= 2 * stddevs[name] + 1e-7
        assert 0.8 * stddevs[name] < kernel.std() < 0.95 * stddevs[name]


def test_lrn_uses_the_tutorial_parameters(network):
    norm = network.get_layer("norm1")
    assert (norm.depth_radius, norm.bias, norm.alpha, norm.beta) == (4, 1.0, 0.001 / 9, 0.75)
    x = tf.random.normal([2, 12, 12, 64])
    np.testing.assert_allclose(norm(x), tf.nn.lrn(x, 4, 1.0, 0.001 / 9, 0.75), rtol=1e-6)


def test_weight_decay_is_wd_times_sum_of_squares_over_two_on_local3_and_local4(network):
    expected = sum(0.004 * np.sum(network.get_layer(name).kernel.numpy() ** 2) / 2
                   for name in ("local3", "local4"))
    assert len(network.losses) == 2
    np.testing.assert_allclose(float(tf.add_n(network.losses)), expected, rtol=1e-5)


def test_loss_is_mean_cross_entropy_plus_weight_decay(network):
    images = tf.random.normal([4, 24, 24, 3])
    labels = tf.constant([0, 3, 9, 1])
    logits = network(images)
    cross_entropy = -np.mean(np.log(tf.nn.softmax(logits).numpy()[np.arange(4), labels]))
    expected = cross_entropy + float(tf.add_n(network.losses))
    np.testing.assert_allclose(float(model_lib.loss(network, logits, labels)), expected,
                               rtol=1e-5)


def test_use_fp16_computes_in_float16_and_returns_float32_logits():
    network = model_lib.inference(use_fp16=True)
    assert network.get_layer("conv1").compute_dtype == "float16"
    assert network.get_layer("conv1").kernel.dtype == tf.float32
    logits = network(tf.random.normal([2, 24, 24, 3]))
    assert logits.dtype == tf.float32
    assert network.count_params() == 1_068_298


def test_the_module_prints_the_summary_with_the_parameter_count():
    result = python_module("hvd_cifar.model")
    assert result.returncode == 0, result.stderr
    assert "Total params: 1068298" in result.stdout
    assert "norm1 (LocalResponseNormal" in result.stdout

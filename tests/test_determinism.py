"""--deterministic: TensorFlow's op determinism, on by default unless XLA compiles the step, so
that a resumed run's weights equal an uninterrupted run's on GPUs too (on CPU they do either
way); said at start and by check, and refused where it cannot hold."""
import pytest

from helpers import assert_one_line_error, python_module, weights_digests


def train(train_dir, steps, *flags):
    result = python_module("hvd_cifar.train", "--synthetic", "--train_dir", train_dir,
                           "--max_steps", steps, "--batch_size", 16, "--log_frequency", 5,
                           *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("flags, words", [
    ((), "; deterministic ops (a resume is bit-identical)"),
    (("--deterministic", "off"), "; ops not deterministic (--deterministic off)")])
def test_a_resumed_run_equals_an_uninterrupted_one_and_the_start_says_which(tmp_path, flags,
                                                                            words):
    whole = train(tmp_path / "whole", 10, *flags)
    train(tmp_path / "halves", 5, *flags)
    resumed = train(tmp_path / "halves", 10, *flags)
    assert words in whole.splitlines()[0], whole
    assert weights_digests(resumed) == weights_digests(whole)


def test_check_says_whether_ops_are_deterministic(tmp_path):
    for setting, words in (("auto", "; deterministic ops (a resume is bit-identical)"),
                           ("off", "; ops not deterministic (--deterministic off)")):
        result = python_module("hvd_cifar.check", "--deterministic", setting, "--train_dir",
                               tmp_path, "--step_seconds", 0.5, "--allreduce_repeats", 2,
                               "--batch_size", 16)
        versions = [line for line in result.stdout.splitlines() if line.startswith("versions")]
        assert len(versions) == 1 and words in versions[0], result.stdout


def test_xla_leaves_ops_not_deterministic_and_on_with_it_is_refused(tmp_path):
    """TensorFlow 2.15 has no deterministic XLA MaxPool gradient: auto says so, on is one line."""
    said = train(tmp_path / "xla", 2, "--xla", "on")
    assert ("; ops not deterministic: XLA compiles the step (--xla off for bit-identical "
            "resumes)") in said.splitlines()[0]
    refused = python_module("hvd_cifar.train", "--synthetic", "--train_dir", tmp_path / "on",
                            "--max_steps", 2, "--xla", "on", "--deterministic", "on")
    assert_one_line_error(refused, "--deterministic on cannot hold with XLA", "--xla off")

"""Quiet by default: no TensorFlow or XLA C++ lines, no launcher tags on rank 0's lines."""
import os
import subprocess
import sys

from helpers import REPO_ROOT, run
from hvd_cifar.native_logs import copy_without_native_lines, is_native_log_line

# Lines as TensorFlow 2.15 and XLA print them on these machines.
NATIVE_LINES = [
    b"2026-12-04 22:37:55.869467: E external/local_xla/xla/stream_executor/"
    b"stream_executor_internal.h:177] SetPriority unimplemented for this stream.",
    b"I0000 00:00:1796423875.867748   24300 device_compiler.h:186] Compiled cluster using XLA!"
    b"  This line is logged at most once for the lifetime of the process.",
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    b"2026-12-04 22:41:46.451043: I tensorflow/core/util/port.cc:113] oneDNN custom operations "
    b"are on.",
    b"2026-12-04 22:41:46.484619: W tensorflow/core/platform/cpu_feature_guard.cc:182] This "
    b"TensorFlow binary is optimized to use available CPU instructions.",
    b"To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
    b"with the appropriate compiler flags.",
    b"W1204 22:37:55.869467   24300 gpu_timer.cc:114] Skipping the delay kernel",
]
KEPT_LINES = [
    b"hvd_cifar: error: --data_dir data: no CIFAR-10 there",
    b"2026-12-04 22:39:09.853927: step 25, loss = 4.80 (1381.4 examples/sec; 2.965 sec/batch)",
    b"[2026-12-04 22:40:01.000000: W /tmp/horovod/common/stall_inspector.cc:107] One or more "
    b"tensors were submitted to be reduced by only a subset of ranks",
    b"2026-12-04 22:37:55.869467: F tensorflow/core/framework/tensor.cc:844] Check failed",
    b"Traceback (most recent call last):",
    b"WARNING:tensorflow:From train.py: a Python warning",
]


def test_the_filter_drops_native_lines_and_keeps_every_other():
    assert [line for line in NATIVE_LINES if not is_native_log_line(line)] == []
    assert [line for line in KEPT_LINES if is_native_log_line(line)] == []


def test_the_filter_passes_lines_on_in_order_with_a_last_line_unended(tmp_path):
    lines = [NATIVE_LINES[0], KEPT_LINES[0], NATIVE_LINES[1], KEPT_LINES[1]]
    source, destination = tmp_path / "in", tmp_path / "out"
    source.write_bytes(b"\n".join(lines + [b"the last, without its newline"]))
    with open(source, "rb") as inp, open(destination, "wb") as out:
        copy_without_native_lines(inp.fileno(), out.fileno())
    assert destination.read_bytes() == (KEPT_LINES[0] + b"\n" + KEPT_LINES[1] + b"\n"
                                        + b"the last, without its newline")


def test_local_sh_shows_rank_0_bare_and_another_rank_by_number():
    sample = ("[1,0]<stdout>:step 5\n[1,1]<stderr>:hvd_cifar: error: rank 1: gone\n"
              "[0]<stdout>:gloo's rank 0\n[3]<stderr>:gloo's rank 3\n[12,10]<stdout>:ten\n"
              "a line of the script\n")
    untag = subprocess.run(
        ["bash", "-c", f"source <(sed -n '/^untag()/,/^}}/p' {REPO_ROOT}/launch/local.sh); untag"],
        input=sample, capture_output=True, text=True, check=True)
    assert untag.stdout.splitlines() == [
        "step 5", "rank 1: hvd_cifar: error: rank 1: gone", "gloo's rank 0",
        "rank 3: gloo's rank 3", "rank 10: ten", "a line of the script"]


def test_a_run_through_local_sh_prints_no_native_line_nor_tag(tmp_path):
    # --xla on compiles the step, which makes XLA log through absl: the lines asked for below.
    result = run([os.path.join(REPO_ROOT, "launch", "local.sh"), "-np", "2", "--synthetic",
                  "--xla", "on", "--max_steps", "3", "--batch_size", "16", "--train_dir",
                  str(tmp_path / "run")])
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (result.stdout + result.stderr).splitlines()
    assert [line for line in lines if is_native_log_line(line.encode())] == []
    assert [line for line in lines if "<stdout>:" in line or "<stderr>:" in line] == []
    assert "hvd_cifar: finished at step 3; weights sha256 by rank: 0=" in result.stdout


def test_hvd_cifar_native_logs_show_brings_them_back(tmp_path):
    result = run([sys.executable, "-m", "hvd_cifar.train", "--synthetic", "--xla", "on",
                  "--max_steps", "2", "--batch_size", "16", "--train_dir", str(tmp_path / "run")],
                 env={"HVD_CIFAR_NATIVE_LOGS": "show"})
    assert result.returncode == 0, result.stderr[-3000:]
    native = [line for line in result.stderr.splitlines() if is_native_log_line(line.encode())]
    assert any("Compiled cluster using XLA" in line for line in native), result.stderr[-3000:]

"""The benchmark runs alone, under horovodrun and beside its peers, and reports sane numbers.

Speed itself is measured by `make bench`, never asserted here."""
import json
import os
import sys

import pytest

from helpers import REPO_ROOT, assert_one_line_error, horovodrun, in_process, python_module, run
from hvd_cifar import bench

SHORT = ("--json", "--steps", 3, "--warmup_steps", 1, "--batch_size", 32)
FIELDS = ("ranks", "batch_size", "images_per_sec", "images_per_sec_per_rank",
          "step_time_ms_median", "step_time_ms_p90", "input_images_per_sec",
          "allreduce_fraction", "flops_per_image", "gflops", "ceiling_gflops")
SUITE = os.path.join(REPO_ROOT, "tools", "bench_suite.py")
# The tutorial net's multiply-adds for one 24x24x3 image: conv1, conv2, local3, local4, softmax.
FORWARD_MULTIPLY_ADDS = (24 * 24 * 64 * 5 * 5 * 3 + 12 * 12 * 64 * 5 * 5 * 64 + 2304 * 384 +
                         384 * 192 + 192 * 10)


def json_lines(output):
    return [json.JSONDecoder().raw_decode(line[line.index("{"):])[0]
            for line in output.splitlines() if '{"framework"' in line]


def assert_sane(result, ranks, batch_size=32):
    for field in FIELDS:
        assert field in result, field
    assert result["ranks"] == ranks and result["batch_size"] == batch_size
    assert result["images_per_sec"] > 0
    assert result["images_per_sec_per_rank"] == pytest.approx(result["images_per_sec"] / ranks,
                                                              abs=0.1)
    assert 0 < result["step_time_ms_median"] <= result["step_time_ms_p90"]
    assert result["flops_per_image"] == 3 * 2 * FORWARD_MULTIPLY_ADDS
    assert result["gflops"] == pytest.approx(
        result["flops_per_image"] * result["images_per_sec"] / 1e9, rel=0.01)
    assert result["ceiling_gflops"] > 0 and result["input_images_per_sec"] > 0
    assert 0 <= result["allreduce_fraction"] <= 1


def test_one_worker_reports_every_field(tmp_path):
    result = python_module("hvd_cifar.bench", *SHORT)
    assert result.returncode == 0, result.stderr
    [report] = json_lines(result.stdout)
    assert_sane(report, ranks=1)
    assert report["allreduce_fraction"] == 0  # a one-rank job has no all-reduce
    assert report["input_source"] == "generated records"
    assert report["real_input_images_per_sec"] > 0
    # every input path measured; the host path is the one a CPU run trains with
    for path in ("per_image", "host", "device"):
        assert report[f"input_{path}_images_per_sec"] > 0
        assert report[f"input_{path}_cpu_ms_per_batch"] > 0
    assert report["input_images_per_sec"] == report["input_host_images_per_sec"]
    assert report["input_device_host_cpu_us_per_step"] > 0


def test_real_input_from_a_data_dir(tiny_data):
    result = python_module("hvd_cifar.bench", *SHORT, "--data_dir", tiny_data)
    assert result.returncode == 0, result.stderr
    [report] = json_lines(result.stdout)
    assert report["input_source"].endswith("cifar-10-batches-bin")


def test_two_ranks_report_once_with_the_allreduce_share():
    result = horovodrun(2, "gloo", "hvd_cifar.bench", *SHORT)
    assert result.returncode == 0, result.stderr
    [report] = json_lines(result.stdout)  # rank 0 alone prints
    assert_sane(report, ranks=2)
    assert report["controller"] == "Gloo" and len(report["devices"]) == 2
    assert report["allreduce_ms"] > 0 and report["allreduce_fraction"] > 0


def test_plain_keras_peer():
    result = python_module("hvd_cifar.bench", "--framework", "keras", *SHORT)
    assert result.returncode == 0, result.stderr
    [report] = json_lines(result.stdout)
    assert report["framework"] == "keras model.fit" and report["ranks"] == 1
    assert 0 < report["step_time_ms_median"] <= report["step_time_ms_p90"]


def test_multiworker_without_tf_config_is_one_line_error():
    result = python_module("hvd_cifar.bench", "--framework", "multiworker", "--json",
                           env={"TF_CONFIG": ""})
    assert_one_line_error(result, "--framework multiworker needs TF_CONFIG")


@pytest.mark.parametrize("flag,value", [("--steps", "0"), ("--batch_size", "-1"),
                                        ("--framework", "pytorch")])
def test_bad_flags(flag, value):
    assert_one_line_error(in_process(bench.main, flag, value), flag, status=2)


def test_scaling_model_arithmetic():
    result = in_process(bench.main, "--model-scaling", "--compute_images_per_sec", 100_000,
                        "--json")
    assert result.returncode == 0, result.stderr
    rows = {(r["gbit_per_sec"], r["allreduce"], r["batch_per_gpu"], r["gpus"]): r
            for r in json.loads(result.stdout)}
    assert len(rows) == 2 * 2 * 3 * 3
    row = rows[25, "fp32", 128, 4]
    # 1,068,298 float32 values, 2(N-1)/N of them through each link of a 4-GPU ring
    assert row["allreduce_mb"] == pytest.approx(1_068_298 * 4 * 1.5 / 1e6, abs=0.01)
    communicate = 1_068_298 * 4 * 1.5 * 8 / 25e9 + 6 * 20e-6
    assert row["allreduce_ms"] == pytest.approx(1000 * communicate, abs=0.001)
    assert row["compute_ms"] == pytest.approx(1.28)
    assert row["efficiency"] == pytest.approx(1.28e-3 / (1.28e-3 + communicate), abs=0.001)
    for bandwidth, precision, batch in [(25, "fp32", 128), (100, "fp16", 2048)]:
        efficiencies = [rows[bandwidth, precision, batch, n]["efficiency"] for n in (4, 16, 64)]
        assert efficiencies == sorted(efficiencies, reverse=True)
    assert rows[25, "fp16", 128, 64]["efficiency"] > rows[25, "fp32", 128, 64]["efficiency"]
    assert rows[100, "fp32", 128, 64]["efficiency"] > rows[25, "fp32", 128, 64]["efficiency"]
    assert rows[25, "fp32", 2048, 64]["efficiency"] > rows[25, "fp32", 128, 64]["efficiency"]
    table = in_process(bench.main, "--model_scaling", "--compute_images_per_sec", 100_000)
    assert "| 25 Gbit/s | fp32 | 128 | 1.280 |" in table.stdout


def test_make_bench_suite_writes_json_table_and_plot(tmp_path):
    result = run([sys.executable, SUITE, "--out", str(tmp_path), "--steps", "2",
                  "--repeats", "1", "--batch_size", "32"])
    assert result.returncode == 0, result.stdout + result.stderr
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    assert set(results["runs"]) == {"keras", "np1", "np2_gloo", "np2_mpi", "multiworker"}
    assert results["runs"]["np2_mpi"]["controller"] == "MPI"
    assert results["runs"]["multiworker"]["ranks"] == 2
    for kept in results["runs"].values():
        assert kept["images_per_sec_repeats"] == [kept["images_per_sec"]]
    assert results["ratios"]["np1_over_keras"] == pytest.approx(
        results["runs"]["np1"]["images_per_sec"] / results["runs"]["keras"]["images_per_sec"],
        rel=1e-3)
    assert [t["ratio"] for t in results["targets"]] == [
        "np1_over_keras", "np2_mpi_over_np1", "input_over_training", "ceiling_fraction",
        "np2_mpi_over_multiworker"]
    table = (tmp_path / "results.md").read_text()
    assert "| MultiWorkerMirroredStrategy 2 workers | 2 |" in table
    assert (tmp_path / "throughput.png").read_bytes()[:4] == b"\x89PNG"


def test_the_suite_keeps_the_median_repeat_with_every_rate(monkeypatch):
    monkeypatch.syspath_prepend(os.path.dirname(SUITE))
    import bench_suite
    repeats = [{"images_per_sec": rate, "step_time_ms_median": 1000 / rate}
               for rate in (900.0, 1200.0, 1000.0)]
    kept = bench_suite.median_run(repeats)
    assert kept["images_per_sec"] == 1000.0 and kept["step_time_ms_median"] == 1.0
    assert kept["images_per_sec_repeats"] == [900.0, 1200.0, 1000.0]
    # An even count keeps the lower middle, a run that happened.
    assert bench_suite.median_run(repeats[:2])["images_per_sec"] == 900.0


@pytest.mark.parametrize("flag", ["--repeats", "--steps"])
def test_the_suite_refuses_zero_repeats_or_steps(flag, tmp_path):
    result = run([sys.executable, SUITE, "--out", str(tmp_path / "out"), flag, "0"])
    assert result.returncode == 2
    assert "--steps and --repeats must be at least 1" in result.stderr
    assert not (tmp_path / "out").exists()

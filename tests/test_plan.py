"""The time-to-accuracy planner: its arithmetic against rows computed by hand, and impossible
inputs refused in one line."""
import json
import math

import pytest

from helpers import assert_one_line_error, in_process

from hvd_cifar import plan

# Round numbers, so every row below is computed by hand in its comment.
INPUTS = {
    "images_to_accuracy": {
        "100": {"0.80": 1_000_000, "0.83": 3_000_000, "reached_by": 5_000_000},
        "400": {"0.80": 4_000_000, "0.83": None, "reached_by": 6_000_000},
        "1600": {"0.80": None, "0.83": None, "reached_by": 0}},
    "images_per_sec_per_gpu": {"50": {"low": 1000, "high": 2000},
                               "100": {"low": 1000, "high": 4000}},
    "gpus_per_node": 2, "nvlink_gbit_per_sec": 800, "network_gbit_per_sec": 8,
    "nvlink_hop_seconds": 0, "network_hop_seconds": 0.001}


@pytest.fixture
def inputs(tmp_path):
    path = tmp_path / "inputs.json"
    path.write_text(json.dumps(INPUTS))
    return plan.load_inputs(str(path))


def test_images_to_a_target_measured_interpolated_bounded_or_unknown(inputs):
    measured = inputs["measured"]
    assert plan.images_to("0.80", 100, measured) == (1e6, "measured")
    # log-linear between 100 (1M) and 400 (4M): halfway in log(batch) is 200, and 2M.
    images, how = plan.images_to("0.80", 200, measured)
    assert how == "interpolated" and math.isclose(images, 2e6)
    assert plan.images_to("0.80", 50, measured) == (1e6, "as batch 100")
    assert plan.images_to("0.83", 400, measured) == (6e6, "lower bound")
    assert plan.images_to("0.83", 200, measured) == (6e6, "lower bound")
    assert plan.images_to("0.80", 1600, measured) == (None, "unmeasured")
    assert plan.images_to("0.80", 3200, measured) == (None, "unmeasured")


def test_the_allreduce_time_within_a_node_and_across_nodes(inputs):
    parameters = 1_000_000
    assert plan.allreduce_seconds(1, inputs, parameters) == 0.0
    # 2 GPUs on one node: 4 MB x 2 x 1/2 = 4 MB = 32 Mbit over 800 Gbit/s = 40 us, no hop time.
    assert math.isclose(plan.allreduce_seconds(2, inputs, parameters), 40e-6)
    # 4 GPUs, two nodes: 4 MB x 2 x 3/4 = 6 MB = 48 Mbit over 8 Gbit/s = 6 ms, + 6 hops x 1 ms.
    assert math.isclose(plan.allreduce_seconds(4, inputs, parameters), 0.012)


def test_a_row_of_the_plan_by_hand(inputs):
    rows = {row["batch_per_gpu"]: row for row in plan.plan_rows(4, inputs)}
    communicate = plan.allreduce_seconds(4, inputs)
    row = rows[50]  # global batch 200: 2M images to 0.80 (interpolated) = 10,000 steps
    assert row["global_batch"] == 200
    fast, slow = 50 / 2000 + communicate, 50 / 1000 + communicate
    assert row["0.80"]["how"] == "interpolated"
    assert all(math.isclose(a, b) for a, b in zip(row["0.80"]["seconds"],
                                                  (10_000 * fast, 10_000 * slow)))
    assert row["0.83"]["how"] == "lower bound"  # 6M at least: 30,000 steps
    assert math.isclose(row["0.83"]["seconds"][0], 30_000 * fast)
    assert rows[100]["global_batch"] == 400 and rows[100]["0.80"]["how"] == "measured"
    # 4M images at 400 = 10,000 steps of 100 / 4000 + all-reduce
    assert math.isclose(rows[100]["0.80"]["seconds"][0], 10_000 * (100 / 4000 + communicate))
    # Equal fast times (374 s each); the slow rate favours 50 (624 s against 1,124 s).
    assert plan.fastest(list(rows.values()), "0.80") is rows[50]
    assert plan.fastest(list(rows.values()), "0.83") is None  # only bounds


def test_the_shipped_inputs_give_the_8_gpu_row_of_1024_by_hand():
    inputs = plan.load_inputs()
    row = {r["batch_per_gpu"]: r for r in plan.plan_rows(8, inputs)}[128]
    # ring over NVLink: 1,068,298 x 4 B x 2 x 7/8 over 3600 Gbit/s, + 14 hops of 5 us
    communicate = 1_068_298 * 4 * 2 * 7 / 8 * 8 / 3600e9 + 14 * 5e-6
    steps = math.ceil(2_176_000 / 1024)
    assert row["0.80"]["how"] == "measured"
    assert math.isclose(row["0.80"]["seconds"][0], steps * (128 / 280_279 + communicate))
    assert math.isclose(row["0.80"]["seconds"][1], steps * (128 / 52_604 + communicate))


@pytest.mark.parametrize("gpus", [8, 32, 64])
def test_the_planner_prints_a_recommendation_for_each_gpu_count(gpus):
    result = in_process(plan.main, "--gpus", gpus)
    assert result.returncode == 0, result.stderr
    assert f"Fastest to 0.80 on {gpus} GPUs: " in result.stdout
    assert f"Recommendation with {gpus} GPUs: use " in result.stdout
    assert result.stdout.count("\n| ") == 6  # the heading and five per-GPU batches


def test_the_recommendation_may_use_fewer_gpus_by_hand(inputs):
    # 1 GPU: batch 100, 10,000 steps of 25-100 ms: 250-1,000 s (middle 500).
    # 2 GPUs (one node): batch 50, global 100: 10,000 steps of 25-50 ms + 43 us: middle 354.
    # 4 GPUs (two nodes, 12.4 ms all-reduce): batch 50, global 200, 10,000 steps: middle 483.
    used, row = plan.recommendation(4, inputs)
    assert (used, row["batch_per_gpu"], row["global_batch"]) == (2, 50, 100)
    assert plan.recommendation(1, inputs)[1]["batch_per_gpu"] == 100


def test_a_measured_rate_replaces_the_range(inputs):
    plan.apply_rates(inputs, ["100=3000"])
    assert inputs["rates"][100] == (3000.0, 3000.0)


@pytest.mark.parametrize("argv, fragment, status", [
    (["--gpus", "0"], "--gpus", 2),
    (["--gpus", "8", "--rate", "128=-5"], "--rate 128=-5: the rate must be a positive", 1),
    (["--gpus", "8", "--rate", "100=5000"], "--rate 100=5000: batch 100 is not one of", 1),
    (["--gpus", "8", "--rate", "fast"], "--rate fast: must be BATCH=IMAGES_PER_SEC", 1),
    (["--gpus", "8", "--network_gbit_per_sec", "0"], "--network_gbit_per_sec", 2),
])
def test_impossible_inputs_are_one_line(argv, fragment, status):
    assert_one_line_error(in_process(plan.main, *argv), fragment, status=status)


@pytest.mark.parametrize("content, fragment", [
    ("not json", "cannot be read as JSON"),
    (json.dumps({**INPUTS, "images_per_sec_per_gpu": {"32": {"low": 5, "high": 1}}}),
     "the rate at batch 32 must be 0 < low <= high"),
    (json.dumps({k: v for k, v in INPUTS.items() if k != "gpus_per_node"}), "gpus_per_node"),
])
def test_an_inputs_file_that_cannot_be_right_is_one_line(tmp_path, content, fragment):
    path = tmp_path / "inputs.json"
    path.write_text(content)
    assert_one_line_error(in_process(plan.main, "--inputs", path), f"--inputs {path}",
                          fragment)

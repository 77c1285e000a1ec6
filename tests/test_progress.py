"""Each log line says how far the run is and how long it has left, and whether the warm-up is
still on; TensorBoard gets the same."""
import re

from helpers import python_module, scalars

from hvd_cifar.output import duration


def test_a_time_left_reads_as_a_person_says_it():
    assert [duration(s) for s in (0.4, 59.4, 61, 3599, 3600, 7620)] == [
        "0 s", "59 s", "1 min 01 s", "59 min 59 s", "1 h 00 min", "2 h 07 min"]


def test_log_lines_say_step_n_of_m_the_time_left_and_the_warm_up(tmp_path):
    result = python_module("hvd_cifar.train", "--synthetic", "--train_dir", tmp_path / "run",
                           "--max_steps", 40, "--batch_size", 16, "--log_frequency", 10,
                           "--warmup_epochs", 0.01)  # 3,125 steps an epoch: 31 of warm-up
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if re.search(r"step \d+, loss", line)]
    progress = [re.search(r"\[(\d+) of 40, (\d+)%, .* in, about .* left(; warm-up to step "
                          r"(\d+))?\]$", line) for line in lines]
    assert all(progress), lines
    assert [(int(p.group(1)), int(p.group(2))) for p in progress] == [
        (10, 25), (20, 50), (30, 75), (40, 100)]
    assert [p.group(4) for p in progress] == ["31", "31", "31", None]
    assert scalars(tmp_path / "run", "progress") == {10: 0.25, 20: 0.5, 30: 0.75, 40: 1.0}
    assert scalars(tmp_path / "run", "seconds_left")[40] == 0.0


def test_run_json_records_how_to_redo_the_run(tiny_data, tmp_path):
    import json
    import subprocess
    from hvd_cifar.data import records
    result = python_module("hvd_cifar.train", "--data_dir", tiny_data, "--train_dir",
                           tmp_path / "run", "--max_steps", 4, "--batch_size", 16,
                           "--no_download", "--seed", 7)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["flags"]["seed"] == 7 and record["flags"]["max_steps"] == 4
    assert record["command"].startswith("python -m hvd_cifar.train --data_dir ")
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    assert record["commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert record["versions"]["tensorflow"] == "2.15.1"
    assert record["hosts"] == [__import__("socket").gethostname()]
    assert len(record["devices"]) == 1 and record["deterministic"] is True
    paths, _ = records.split_files(str(tiny_data / records.BATCHES_DIR), "train")
    assert record["data_fingerprint"] == records.fingerprint(paths)
    assert record["started"] <= record["finished"] and record["finished_step"] == 4
    assert f"0={record['weights_digest']}" in result.stdout

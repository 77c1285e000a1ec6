"""Redoing a recorded run from its run.json (hvd_cifar.rerun, make reproduce FROM=)."""
import json
import sys

import pytest

from helpers import REPO_ROOT, run
from hvd_cifar.command import UserError, flag_values, parse_command
from hvd_cifar.rerun import RerunConfig, check_data, read_record, rerun_command, train_arguments
from hvd_cifar.train import TrainConfig


def recorded_flags(*argv):
    return flag_values(parse_command(TrainConfig, "train", "", list(argv)))


def test_the_rerun_sets_every_recorded_flag_and_its_own_folders():
    flags = recorded_flags("--optimizer", "lars", "--trust_coefficient", "0.08", "--synthetic",
                           "--warmup_epochs", "5", "--backward_passes_per_step", "16",
                           "--horovod_timeline", "/tmp/t.json", "--fresh", "--seed", "7",
                           "--data_dir", "/old/data", "--train_dir", "/old/run")
    words = train_arguments(flags, "/new/run", "/new/data")
    reparsed = recorded_flags(*words)
    assert reparsed == {**flags, "train_dir": "/new/run", "data_dir": "/new/data",
                        "fresh": False}
    assert reparsed["trust_coefficient"] == 0.08 and reparsed["synthetic"] is True


def test_a_flag_this_code_does_not_know_is_refused_by_the_trainer_by_name(trained, tmp_path):
    record = json.loads((trained[1] / "run.json").read_text())
    record["flags"]["learning_rate_x"] = 1
    (tmp_path / "run.json").write_text(json.dumps(record))
    result = run([sys.executable, "-m", "hvd_cifar.rerun", str(tmp_path / "run.json"),
                  "--train_dir", str(tmp_path / "rerun")])
    assert result.returncode != 0
    assert "unrecognized arguments: --learning_rate_x 1" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_a_record_without_flags_or_unreadable_is_refused(tmp_path):
    old = tmp_path / "run.json"
    old.write_text(json.dumps({"ranks": 2, "global_batch": 256}))
    with pytest.raises(UserError, match="records no flags"):
        read_record(str(old))
    old.write_text("{not json")
    with pytest.raises(UserError, match="not a readable run.json"):
        read_record(str(old))
    with pytest.raises(UserError, match="no such file"):
        read_record(str(tmp_path / "gone.json"))


def test_a_run_resumed_with_another_set_up_is_refused(tmp_path):
    # Its flags are those of the last start: run from nothing they would not redo it.
    path = tmp_path / "run.json"
    record = {"ranks": 2, "flags": recorded_flags("--epochs_per_decay", "31.25")}
    path.write_text(json.dumps(record))
    assert read_record(str(path))["flags"]["epochs_per_decay"] == 31.25
    path.write_text(json.dumps({**record, "earlier_setups": [{"ranks": 2, "lr_rule": "x"}]}))
    with pytest.raises(UserError, match="resumed with another set-up than it started with"):
        read_record(str(path))


def test_other_data_and_a_used_train_dir_are_refused(trained, tiny_data, tmp_path):
    data_dir, train_dir = trained[0], trained[1]
    record = read_record(str(train_dir / "run.json"))
    check_data(record, str(data_dir))  # the recorded data passes
    with pytest.raises(UserError, match=f"--data_dir {tiny_data}: its training files are not "
                                        "the recorded run's"):
        check_data(record, str(tiny_data))
    config = RerunConfig(run_json=str(train_dir / "run.json"), train_dir=str(train_dir))
    with pytest.raises(UserError, match="holds a run already"):
        rerun_command(config)


def test_a_rerun_ends_with_the_recorded_weights(trained, tmp_path):
    train_dir = trained[1]
    rerun_dir = tmp_path / "rerun"
    result = run([sys.executable, "-m", "hvd_cifar.rerun", str(train_dir / "run.json"),
                  "--train_dir", str(rerun_dir)])
    assert result.returncode == 0, result.stderr[-3000:]
    recorded = json.loads((train_dir / "run.json").read_text())
    assert recorded["weights_digest"] in result.stdout
    assert "are the same as the recorded run's" in result.stdout
    rerun_record = json.loads((rerun_dir / "run.json").read_text())
    assert rerun_record["data_fingerprint"] == recorded["data_fingerprint"]
    assert rerun_record["flags"]["train_dir"] == str(rerun_dir)


def test_make_reproduce_from_names_the_rerun_command():
    result = run(["make", "-n", "reproduce", "FROM=runs/train/run.json", "OUT=runs/again"],
                 cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert "-m hvd_cifar.rerun \"runs/train/run.json\" --train_dir \"runs/again\"" in result.stdout

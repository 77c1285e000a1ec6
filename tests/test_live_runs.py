"""A live run is never touched by another command: --fresh moves only a finished run (never a
live one, nor one living below it, nor what was never a run, nor a link), evaluate beside a run
that deletes checkpoints, Ctrl-C on a one-process run, and what a double Ctrl-C leaves."""
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time

import pytest

from helpers import (ENV, REPO_ROOT, assert_one_line_error, launched,
                     python_module, wait_for_step)

from hvd_cifar import processes, train_dir as train_dir_lib
from hvd_cifar.command import UserError

TRAIN_FLAGS = ["--batch_size", "16", "--no_download", "--seed", "3"]


@pytest.fixture
def live_process():
    """A real process of this host, alive for the test: the holder of a live lock."""
    holder = subprocess.Popen(["sleep", "600"])
    yield holder.pid
    holder.kill()
    holder.wait()


def write_live_lock(folder, pid):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / train_dir_lib.LOCK_NAME).write_text(json.dumps(
        {"host": train_dir_lib.socket.gethostname(), "pid": pid,
         "pid_started": processes.process_start_time(pid), "boot_id": processes.boot_id(),
         "started": "2026-12-01T00:00:00"}))


def finished_run(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.log").write_text("step 10, loss = 2.30\n")
    (folder / "ckpt-10.index").write_bytes(b"index")
    return folder


def test_fresh_refuses_a_folder_with_a_live_run_below_it(tmp_path, live_process):
    outer = finished_run(tmp_path / "outer")
    write_live_lock(outer / "inner", live_process)
    with pytest.raises(UserError, match=rf"--fresh will not move --train_dir {outer} aside: a "
                                        rf"run is alive in it \(.*process {live_process}.*"
                                        rf"lock {outer}/inner/run.lock\)"):
        train_dir_lib.create_or_move_aside(str(outer), fresh=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outer"]
    assert (outer / "inner" / "run.lock").exists()


def test_fresh_refuses_its_own_live_run_unless_taken_over(tmp_path, live_process):
    run = finished_run(tmp_path / "run")
    write_live_lock(run, live_process)
    with pytest.raises(UserError, match="a run is alive in it"):
        train_dir_lib.create_or_move_aside(str(run), fresh=True)
    train_dir_lib.create_or_move_aside(str(run), fresh=True, take_over=True)
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.previous-")]
    assert len(moved) == 1 and (moved[0] / "train.log").exists()


def test_fresh_moves_a_run_whose_lock_holder_is_gone(tmp_path):
    run = finished_run(tmp_path / "run")
    gone = subprocess.Popen(["true"])
    gone.wait()
    write_live_lock(run / "old", gone.pid)
    train_dir_lib.create_or_move_aside(str(run), fresh=True)
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == ["run", "run.previous"]
    assert list(run.iterdir()) == []


def test_fresh_refuses_a_folder_that_never_held_a_run(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=rf"--fresh will not move --train_dir {notes} aside: it "
                                        "holds no run"):
        train_dir_lib.create_or_move_aside(str(notes), fresh=True)
    assert (notes / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


def test_fresh_through_a_link_keeps_the_link(tmp_path, capsys):
    target = finished_run(tmp_path / "disk" / "run")
    link = tmp_path / "link"
    link.symlink_to(target)
    train_dir_lib.create_or_move_aside(str(link), fresh=True)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.is_dir() and list(target.iterdir()) == []
    moved = [p for p in target.parent.iterdir() if p.name.startswith("run.previous-")]
    assert len(moved) == 1 and (moved[0] / "train.log").exists()
    assert f"({link} links to {target}, which now starts empty)" in capsys.readouterr().out


def test_fresh_on_a_live_nested_run_is_one_line_from_the_trainer(tiny_data, tmp_path,
                                                                  live_process):
    outer = finished_run(tmp_path / "outer")
    write_live_lock(outer / "inner", live_process)
    result = python_module("hvd_cifar.train", "--data_dir", tiny_data, "--train_dir", outer,
                           "--max_steps", 1, "--fresh", *TRAIN_FLAGS)
    assert_one_line_error(result, f"--fresh will not move --train_dir {outer} aside", status=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outer"]


def read_until(job, text, timeout=300):
    """The job's output up to and including the line holding text, read from its pipe with a
    deadline (straight from the file descriptor: a buffered readline would hide lines from
    select, and a plain one would wait for ever)."""
    seen, deadline, descriptor = "", time.monotonic() + timeout, job.stdout.fileno()
    while text not in seen:
        left = deadline - time.monotonic()
        ready = left > 0 and select.select([descriptor], [], [], left)[0]
        chunk = os.read(descriptor, 1 << 16).decode(errors="replace") if ready else ""
        if not chunk:
            raise AssertionError(f"{text!r} never came: {seen[-3000:]}")
        seen += chunk
    return seen


def alone(train_dir, *extra):
    return [sys.executable, "-m", "hvd_cifar.train", "--synthetic", "--train_dir",
            str(train_dir), "--max_steps", "1000000", "--log_frequency", "1000000",
            "--checkpoint_every_steps", "1000000", "--seed", "3", *map(str, extra)]


def test_ctrl_c_on_a_one_process_run_stops_it_within_a_step_and_keeps_the_lock_until_then(
        tmp_path):
    train_dir = tmp_path / "run"
    with launched(alone(train_dir, "--batch_size", 16)) as job:
        read_until(job, "starting at step 0")
        time.sleep(3)  # some steps, none of them logged or saved
        job.send_signal(signal.SIGINT)
        output = job.communicate(timeout=120)[0]
    assert job.returncode == 128 + signal.SIGINT, output
    log = (train_dir / "train.log").read_text()
    stopped = [line for line in log.splitlines() if "stopped by SIGINT at step" in line]
    assert len(stopped) == 1, log
    step = int(stopped[0].split("at step ")[1].split(";")[0])
    assert (train_dir / f"ckpt-{step}.index").exists()
    assert not (train_dir / "run.lock").exists()
    again = python_module("hvd_cifar.train", "--synthetic", "--train_dir", train_dir,
                          "--max_steps", step + 2, "--batch_size", 16, "--seed", 3)
    assert again.returncode == 0, again.stderr
    assert f"resuming from {train_dir}/ckpt-{step} at step {step}" in again.stdout


def test_a_second_ctrl_c_ends_a_one_process_run_at_once_and_the_next_run_goes_on(tmp_path):
    train_dir = tmp_path / "run"
    # Steps of 400 backward passes: the first Ctrl-C waits for the end of one.
    with launched(alone(train_dir, "--batch_size", 32, "--backward_passes_per_step", 400,
                        "--lr_scaling", "none", "--optimizer", "sgd")) as job:
        read_until(job, "starting at step 0")
        job.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 120
        # The first Ctrl-C has been taken when the process no longer catches SIGINT.
        while processes.caught_signals(job.pid) & (1 << (signal.SIGINT - 1)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        job.send_signal(signal.SIGINT)
        output = job.communicate(timeout=20)[0]
    assert job.returncode == -signal.SIGINT, output
    assert not list(train_dir.glob("ckpt-*"))  # no step was complete, and none is half-written
    again = python_module("hvd_cifar.train", "--synthetic", "--train_dir", train_dir,
                          "--max_steps", 2, "--batch_size", 16, "--seed", 3)
    assert again.returncode == 0, again.stderr
    assert "took over the lock of host" in again.stdout
    assert f"process {job.pid} of this host is gone" in again.stdout


def test_evaluate_beside_a_run_that_deletes_its_checkpoints_takes_the_newest_again(
        tiny_data, tmp_path):
    train_dir = tmp_path / "run"
    trainer = [sys.executable, "-m", "hvd_cifar.train", "--data_dir", str(tiny_data),
               "--train_dir", str(train_dir), "--max_steps", "1000000", "--log_frequency", "50",
               "--checkpoint_every_steps", "1", "--keep_checkpoints", "1", *TRAIN_FLAGS]
    evaluate = [sys.executable, "-m", "hvd_cifar.evaluate", "--data_dir", str(tiny_data),
                "--checkpoint_dir", str(train_dir), "--eval_dir", str(tmp_path / "eval")]
    # The run's own output is not read here: to a file, so it never fills a pipe and stops.
    training = subprocess.Popen(trainer, env=ENV, cwd=REPO_ROOT, start_new_session=True,
                                stdout=open(tmp_path / "train.out", "w"),
                                stderr=subprocess.STDOUT)
    try:
        wait_for_step(train_dir, 50)
        for _ in range(3):
            once = subprocess.run(evaluate + ["--run_once"], capture_output=True, text=True,
                                  env=ENV, cwd=REPO_ROOT, timeout=300)
            assert once.returncode == 0, once.stderr
            assert "precision @ 1 = " in once.stdout
            assert "Traceback" not in once.stderr and "WARNING" not in once.stderr, once.stderr
        every = subprocess.run(evaluate + ["--all_checkpoints"], capture_output=True, text=True,
                               env=ENV, cwd=REPO_ROOT, timeout=300)
        assert every.returncode == 0, every.stderr
        assert "precision @ 1 = " in every.stdout or "skipped" in every.stdout, every.stdout
        with launched(evaluate + ["--eval_interval_secs", "1"]) as watcher:
            # Two evaluations of checkpoints the run deletes as it goes, and still watching.
            watched = read_until(watcher, "precision @ 1 = ")
            watched += read_until(watcher, "precision @ 1 = ")
            assert watcher.poll() is None, watched
            watcher.send_signal(signal.SIGINT)
            watched += watcher.communicate(timeout=120)[0]
        assert training.poll() is None
    finally:
        os.killpg(training.pid, signal.SIGKILL)
        training.wait()
    assert watcher.returncode == 128 + signal.SIGINT, watched
    assert "error" not in watched and "Traceback" not in watched, watched


def test_the_first_step_has_an_allowance_of_its_own_said_at_start(tmp_path):
    result = python_module("hvd_cifar.train", "--synthetic", "--train_dir", tmp_path / "run",
                           "--max_steps", 5, "--batch_size", 16, "--hang_timeout_secs", 60,
                           "--first_step_timeout_secs", 0.2)
    assert ("a rank that waits longer than 60 s for a step, its all-reduce or a checkpoint "
            "ends the job (--hang_timeout_secs); for the first step, which waits for every "
            "rank to join and compile, 0.2 s (--first_step_timeout_secs)") in result.stdout
    # Tracing and compiling the first step takes longer than 0.2 s.
    assert result.returncode == 124, result.stdout + result.stderr
    assert_one_line_error(result, "(--first_step_timeout_secs 0.2) at step 1 for the first "
                          "training step", status=124)


def test_a_resume_says_every_change_that_makes_it_another_experiment(trained, tmp_path):
    train_dir = tmp_path / "run"
    shutil.copytree(trained[1], train_dir)
    before = json.loads((train_dir / "run.json").read_text())
    result = python_module("hvd_cifar.train", "--synthetic", "--seed", 5, "--train_dir",
                           train_dir, "--max_steps", 6, "--batch_size", 8)
    assert result.returncode == 0, result.stderr
    changed = [line for line in result.stdout.splitlines() if "resuming with changes:" in line]
    assert len(changed) == 1, result.stdout
    for change in ("--synthetic False -> True", "--seed 0 -> 5",
                   f"the data (fingerprint of its training files) {before['data_fingerprint']} "
                   "-> None"):
        assert change in changed[0]
    after = json.loads((train_dir / "run.json").read_text())
    assert after["synthetic"] is True and after["seed"] == 5
    assert after["earlier_setups"] == [before]


def test_after_a_double_ctrl_c_under_mpirun_the_next_run_goes_on_by_itself(tiny_data,
                                                                           tmp_path):
    from helpers import BIN, wait_until_gone
    train_dir = tmp_path / "run"
    command = [os.path.join(BIN, "horovodrun"), "-np", "2", "--mpi", sys.executable, "-m",
               "hvd_cifar.train", "--data_dir", str(tiny_data), "--train_dir", str(train_dir),
               "--max_steps", "100000", "--log_frequency", "5", "--checkpoint_every_steps",
               "20", *TRAIN_FLAGS]
    with launched(command) as job:
        wait_for_step(train_dir, 40)
        for _ in range(2):  # within 5 s: mpirun ends its ranks at once
            os.killpg(job.pid, signal.SIGINT)
            time.sleep(0.2)
        job.communicate(timeout=180)
        assert wait_until_gone(train_dir)
    kept = sorted(int(p.name[5:-6]) for p in train_dir.glob("ckpt-*.index"))
    assert kept and kept[-1] >= 40
    lock_left = (train_dir / "run.lock").exists()
    rerun = subprocess.run([*command[:command.index("--max_steps") + 1], str(kept[-1] + 5),
                            *command[command.index("--max_steps") + 2:]], capture_output=True,
                           text=True, env=ENV, cwd=REPO_ROOT, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {train_dir}/ckpt-{kept[-1]} at step {kept[-1]}" in rerun.stdout
    if lock_left:  # the ranks were ended before rank 0 released it
        assert "took over the lock of host" in rerun.stdout

"""Nothing lost: checkpoints found from their files, Ctrl-C under every launcher, a lock that a
living holder keeps, a disk full at start, and one clear line for hostile inputs."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zlib

import pytest

from helpers import (BIN, ENV, REPO_ROOT, assert_one_line_error, error_lines, fill, launched,
                     python_module, wait_until_gone)

from hvd_cifar import checkpoint as checkpoint_lib, processes, train_dir as train_dir_lib
from hvd_cifar.command import UserError

TRAIN_FLAGS = ["--batch_size", "16", "--no_download", "--seed", "3"]


def checkpoint_bytes(train_dir):
    return {p.name: p.read_bytes() for p in sorted(train_dir.glob("ckpt-*"))}


@pytest.fixture(scope="module")
def three_checkpoints(tiny_data, tmp_path_factory):
    """A run of 30 steps with ckpt-10, ckpt-20 and ckpt-30."""
    train_dir = tmp_path_factory.mktemp("three") / "run"
    result = python_module("hvd_cifar.train", "--data_dir", tiny_data, "--train_dir", train_dir,
                           "--max_steps", 30, "--checkpoint_every_steps", 10,
                           "--log_frequency", 10, *TRAIN_FLAGS)
    assert result.returncode == 0, result.stderr
    return train_dir


def damage_index_file(train_dir, how):
    state = train_dir / "checkpoint"
    if how == "newest index deleted":
        (train_dir / "ckpt-30.index").unlink()
    elif how == "state file deleted":
        state.unlink()
    elif how == "state file says hello":
        state.write_text("hello")
    elif how == "state file names a missing ckpt-99":
        state.write_text('model_checkpoint_path: "ckpt-99"\n'
                         'all_model_checkpoint_paths: "ckpt-99"\n')
    elif how == "state file of garbage bytes":
        state.write_bytes(bytes(range(256)) * 4)
    elif how == "state file empty":
        state.write_bytes(b"")
    elif how == "newest data truncated":
        data_file = train_dir / "ckpt-30.data-00000-of-00001"
        data_file.write_bytes(data_file.read_bytes()[:1000])


DAMAGES = ["newest index deleted", "state file deleted", "state file says hello",
           "state file names a missing ckpt-99", "state file of garbage bytes", "state file empty",
           "newest data truncated"]


@pytest.mark.parametrize("how", DAMAGES)
def test_the_finder_takes_the_newest_complete_checkpoint_whatever_the_damage(
        three_checkpoints, tmp_path, how):
    train_dir = tmp_path / "run"
    shutil.copytree(three_checkpoints, train_dir)
    damage_index_file(train_dir, how)
    newest_complete = 20 if how in ("newest index deleted", "newest data truncated") else 30
    found = checkpoint_lib.find(str(train_dir))
    assert found.newest == f"{train_dir}/ckpt-{newest_complete}"
    assert [p.rsplit("/", 1)[1] for p in found.complete] == [
        f"ckpt-{step}" for step in range(10, newest_complete + 1, 10)]
    assert [path for path, _ in found.damaged] == (
        [] if newest_complete == 30 else [f"{train_dir}/ckpt-30"])


# End to end, for a damaged checkpoint and a damaged list: evaluate reads the newest complete
# checkpoint and training resumes from it (the other damages differ only in what the finder
# sees, tested above).
@pytest.mark.parametrize("how", ["newest data truncated", "state file says hello"])
def test_a_damaged_checkpoint_index_resumes_from_the_newest_complete_checkpoint(
        three_checkpoints, tiny_data, tmp_path, how):
    train_dir = tmp_path / "run"
    shutil.copytree(three_checkpoints, train_dir)
    damage_index_file(train_dir, how)
    newest_complete = 20 if how in ("newest index deleted", "newest data truncated") else 30
    kept = {name: content for name, content in checkpoint_bytes(train_dir).items()
            if name.startswith(("ckpt-10.", "ckpt-20."))}

    evaluate = python_module("hvd_cifar.evaluate", "--data_dir", tiny_data, "--checkpoint_dir",
                             train_dir, "--run_once")
    assert evaluate.returncode == 0, evaluate.stderr
    assert f"(step {newest_complete}," in evaluate.stdout

    result = python_module("hvd_cifar.train", "--data_dir", tiny_data, "--train_dir", train_dir,
                           "--max_steps", 35, "--checkpoint_every_steps", 10,
                           "--log_frequency", 5, *TRAIN_FLAGS)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert (f"resuming from {train_dir}/ckpt-{newest_complete} at step {newest_complete}"
            in result.stdout), result.stdout
    if newest_complete == 20:
        assert f"skipped {train_dir}/ckpt-30, newer than {train_dir}/ckpt-20 but damaged" \
            in result.stdout
    assert "starting at step 0" not in result.stdout
    for name, content in kept.items():  # older complete checkpoints untouched
        assert (train_dir / name).read_bytes() == content, name
    assert (train_dir / "ckpt-35.index").exists()


def test_a_train_dir_whose_checkpoints_are_all_damaged_is_refused_in_one_line(
        three_checkpoints, tiny_data, tmp_path):
    train_dir = tmp_path / "run"
    shutil.copytree(three_checkpoints, train_dir)
    for index in train_dir.glob("ckpt-*.index"):
        index.unlink()
    before = checkpoint_bytes(train_dir)
    result = python_module("hvd_cifar.train", "--data_dir", tiny_data, "--train_dir", train_dir,
                           "--max_steps", 40, *TRAIN_FLAGS)
    line = assert_one_line_error(result, "holds no complete checkpoint",
                                 f"checkpoint {train_dir}/ckpt-30: its index ckpt-30.index is "
                                 "missing", "--fresh", status=1)
    assert f"{train_dir}/ckpt-20" in line
    assert checkpoint_bytes(train_dir) == before
    assert not (train_dir / "run.lock").exists()
    evaluate = python_module("hvd_cifar.evaluate", "--data_dir", tiny_data, "--checkpoint_dir",
                             train_dir, "--run_once")
    assert_one_line_error(evaluate, f"--checkpoint_dir {train_dir} holds no complete checkpoint",
                          status=1)


# ---------------------------------------------------------------------------------------------
# Ctrl-C: SIGINT to the launcher's process group, as a terminal sends it

def ctrl_c_command(launcher, data_dir, train_dir):
    flags = ["--batch_size", "16", "--no_download", "--log_frequency", "5"]
    if launcher == "make":
        return ["make", "--no-print-directory", "train", f"DATA_DIR={data_dir}",
                f"TRAIN_DIR={train_dir}", "STEPS=100000", f"TRAIN_FLAGS={' '.join(flags)}"]
    return [os.path.join(BIN, "horovodrun"), "-np", "2", f"--{launcher}",
            os.path.join(BIN, "python"), "-m", "hvd_cifar.train", "--data_dir", str(data_dir),
            "--train_dir", str(train_dir), "--max_steps", "100000", *flags]


def wait_for_training(train_dir, job):
    deadline = time.monotonic() + 300
    log = train_dir / "train.log"
    while time.monotonic() < deadline and job.poll() is None:
        if log.exists() and re.search(r"step \d+, loss", log.read_text()):
            return
        time.sleep(0.2)
    pytest.fail(f"training did not start: {job.poll()}")


# Tries of each launcher in the suite (each one starts and stops a 2-rank job);
# tools/ctrl_c_tries.py runs as many as asked (docs/results/faults.md).
CTRL_C_TRIES = 1


@pytest.mark.parametrize("launcher,signals", [("mpi", 1), ("gloo", 1), ("make", 2)])
def test_ctrl_c_saves_a_checkpoint_at_every_try(tiny_data, tmp_path, launcher, signals):
    """Tries in a row; make (which trains through launch/local.sh) gets Ctrl-C twice, 0.2 s
    apart."""
    for attempt in range(CTRL_C_TRIES):
        train_dir = tmp_path / f"run{attempt}"
        with launched(ctrl_c_command(launcher, tiny_data, train_dir)) as job:
            wait_for_training(train_dir, job)
            for _ in range(signals):
                os.killpg(job.pid, signal.SIGINT)
                time.sleep(0.2)
            job.communicate(timeout=180)
            assert wait_until_gone(train_dir), f"try {attempt}: a rank was left running"
        log = (train_dir / "train.log").read_text()
        # Rank 0 writes at once when it sees the request after a step, or with every rank at
        # the log step when the request lands after that check (or on another rank first).
        written = re.search(r"SIG(?:INT|TERM) received: checkpoint of step (\d+) written|"
                            r"stopped by SIG(?:INT|TERM) at step (\d+); checkpoint written", log)
        assert written, f"try {attempt}: {log[-1500:]}"
        step = written.group(1) or written.group(2)
        assert (train_dir / f"ckpt-{step}.index").exists(), f"try {attempt}"
        leftovers = [p.name for p in train_dir.iterdir()
                     if p.name == "run.lock" or p.name.endswith("_temp")]
        assert leftovers == [], f"try {attempt}: {leftovers}"


def test_ctrl_c_to_one_process_names_sigint_and_the_rerun_resumes_there(tiny_data, tmp_path):
    train_dir = tmp_path / "run"
    command = [sys.executable, "-m", "hvd_cifar.train", "--data_dir", str(tiny_data),
               "--train_dir", str(train_dir), "--max_steps", "100000", "--log_frequency", "5",
               *TRAIN_FLAGS]
    with launched(command) as job:
        wait_for_training(train_dir, job)
        os.killpg(job.pid, signal.SIGINT)
        output, _ = job.communicate(timeout=120)
    assert job.returncode == 128 + signal.SIGINT
    stopped = re.search(r"stopped by SIGINT at step (\d+); checkpoint written", output)
    assert stopped, output[-2000:]
    step = int(stopped.group(1))
    rerun = python_module("hvd_cifar.train", "--data_dir", tiny_data, "--train_dir", train_dir,
                          "--max_steps", step + 2, "--log_frequency", 5, *TRAIN_FLAGS)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming from {train_dir}/ckpt-{step} at step {step}" in rerun.stdout


# ---------------------------------------------------------------------------------------------
# The lock

def write_lock(train_dir, holder, age_seconds=0.0):
    train_dir.mkdir(exist_ok=True)
    path = train_dir / train_dir_lib.LOCK_NAME
    path.write_text(holder if isinstance(holder, str) else json.dumps(holder))
    stamp = time.time() - age_seconds
    os.utime(path, (stamp, stamp))
    return path


def this_host_holder(pid):
    return {"host": train_dir_lib.socket.gethostname(), "pid": pid,
            "pid_started": processes.process_start_time(pid),
            "boot_id": processes.boot_id(), "started": "2026-01-01T00:00:00"}


def test_a_suspended_holder_keeps_its_lock_however_old_the_file(tmp_path):
    holder = subprocess.Popen(["sleep", "600"])
    try:
        holder.send_signal(signal.SIGSTOP)  # Ctrl-Z, scontrol suspend
        lock = write_lock(tmp_path / "run", this_host_holder(holder.pid), age_seconds=3600)
        with pytest.raises(UserError, match=f"in use by another run: host .*process "
                                            f"{holder.pid}"):
            train_dir_lib.TrainDirLock(str(tmp_path / "run"))
        assert json.loads(lock.read_text())["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_a_pid_reused_by_another_process_is_stale(tmp_path):
    other = this_host_holder(os.getpid())
    other["pid_started"] -= 1  # the holder of that id started earlier: it is gone
    write_lock(tmp_path / "run", other)
    lock = train_dir_lib.TrainDirLock(str(tmp_path / "run"))
    try:
        assert "belongs to another now" in lock.notes[0]
    finally:
        lock.release()


# A contender for a train_dir's lock, in a process of its own (a fork of this test process,
# which has TensorFlow's threads, would be fragile): it waits for the common start time, tries,
# holds what it got for a second, and prints "won" or the refusal.
CONTENDER = """
import sys, time
from hvd_cifar import train_dir
from hvd_cifar.command import UserError
while time.time() < float(sys.argv[2]):
    pass
try:
    lock = train_dir.TrainDirLock(sys.argv[1])
    print("won", flush=True)
    time.sleep(1.0)
    lock.release()
except UserError as error:
    print(error, flush=True)
"""


@pytest.mark.parametrize("trial", range(4))
def test_of_several_contenders_for_a_stale_lock_exactly_one_wins(tmp_path, trial):
    gone = subprocess.Popen(["true"])
    gone.wait()
    write_lock(tmp_path / "run", this_host_holder(gone.pid) | {"pid_started": 1})
    start = time.time() + 3.0  # every contender has started by then
    contenders = [subprocess.Popen([sys.executable, "-c", CONTENDER, str(tmp_path / "run"),
                                    str(start)], env=ENV, cwd=REPO_ROOT, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                  for _ in range(4)]
    outcomes = [contender.communicate(timeout=60)[0].strip() for contender in contenders]
    assert outcomes.count("won") == 1, outcomes
    assert all("in use by another run" in o for o in outcomes if o != "won"), outcomes


@pytest.mark.parametrize("content", ["[1, 2]", "42", "null", "{not json"])
def test_a_lock_holding_nonsense_is_judged_by_its_age(tmp_path, content):
    write_lock(tmp_path / "fresh", content)
    with pytest.raises(UserError, match="in use by another run: an unreadable holder"):
        train_dir_lib.TrainDirLock(str(tmp_path / "fresh"))
    taken = train_dir_lib.TrainDirLock(str(tmp_path / "fresh"), take_over=True)
    assert "--take_over_train_dir" in taken.notes[0]
    taken.release()
    write_lock(tmp_path / "old", content, age_seconds=3600)
    old = train_dir_lib.TrainDirLock(str(tmp_path / "old"))
    assert "not refreshed for" in old.notes[0]
    old.release()


def test_a_lock_naming_an_impossible_pid_of_this_host_is_stale(tmp_path):
    write_lock(tmp_path / "run", {"host": train_dir_lib.socket.gethostname(), "pid": 2**32})
    lock = train_dir_lib.TrainDirLock(str(tmp_path / "run"))
    assert f"process {2**32} of this host is gone" in lock.notes[0]
    lock.release()


def test_a_lock_from_the_future_says_the_clocks_differ(tmp_path):
    write_lock(tmp_path / "run", {"host": "elsewhere", "pid": 7}, age_seconds=-600)
    with pytest.raises(UserError, match=r"refreshed 600 s in the future \(the clocks"):
        train_dir_lib.TrainDirLock(str(tmp_path / "run"))


def test_a_lock_that_is_a_folder_is_refused_even_when_taking_over(tiny_data, tmp_path):
    (tmp_path / "run" / "run.lock").mkdir(parents=True)
    result = python_module("hvd_cifar.train", "--data_dir", tiny_data, "--train_dir",
                           tmp_path / "run", "--max_steps", 1, "--take_over_train_dir",
                           *TRAIN_FLAGS)
    assert_one_line_error(result, f"{tmp_path}/run/run.lock is not a file", status=1)


@pytest.fixture
def read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def make_read_only(folder):
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)


def test_a_stale_lock_that_cannot_be_replaced_is_one_line(tiny_data, read_only_folder):
    write_lock(read_only_folder, {"host": "elsewhere", "pid": 7}, age_seconds=3600)
    make_read_only(read_only_folder)
    result = python_module("hvd_cifar.train", "--data_dir", tiny_data, "--train_dir",
                           read_only_folder, "--max_steps", 1, *TRAIN_FLAGS)
    assert_one_line_error(result, f"--train_dir {read_only_folder}", status=1)


def test_a_disk_full_at_start_is_one_line_and_leaves_nothing(tiny_data, small_disk):
    fill(small_disk)
    for train_dir in (small_disk / "new", small_disk):
        result = python_module("hvd_cifar.train", "--data_dir", tiny_data, "--train_dir",
                               train_dir, "--max_steps", 1, *TRAIN_FLAGS)
        assert_one_line_error(result, f"--train_dir {train_dir}", status=1)
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_fresh_on_a_mount_point_is_one_line(tiny_data, small_disk):
    (small_disk / "train.log").write_text("an earlier run\n")
    result = python_module("hvd_cifar.train", "--data_dir", tiny_data, "--train_dir",
                           small_disk, "--max_steps", 1, "--fresh", *TRAIN_FLAGS)
    assert_one_line_error(result, f"--fresh cannot move --train_dir {small_disk} aside: it is "
                          "a mount point", status=1)
    assert (small_disk / "train.log").read_text() == "an earlier run\n"


def test_a_train_dir_that_is_a_file_is_named_so(tiny_data, tmp_path):
    (tmp_path / "run").write_text("mine")
    result = python_module("hvd_cifar.train", "--data_dir", tiny_data, "--train_dir",
                           tmp_path / "run", "--max_steps", 1, *TRAIN_FLAGS)
    assert_one_line_error(result, f"--train_dir {tmp_path}/run is a file, not a folder",
                          status=1)
    assert (tmp_path / "run").read_text() == "mine"


def test_a_seed_beyond_the_range_is_refused_by_the_flag(capsys):
    from hvd_cifar import train
    with pytest.raises(SystemExit) as ended:
        train.main(["--seed", "4294967296"])
    assert ended.value.code == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "--seed" in lines[0] and "2147483647" in lines[0], lines


# ---------------------------------------------------------------------------------------------
# Inputs

def test_class_names_that_leave_labels_out_show_them_as_class_n(tiny_data, three_checkpoints,
                                                                tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(tiny_data, data_dir)
    (data_dir / "cifar-10-batches-bin" / "batches.meta.txt").write_text("cat\ndog\nbird\n")
    evaluate = python_module("hvd_cifar.evaluate", "--data_dir", data_dir, "--checkpoint_dir",
                             three_checkpoints, "--eval_dir", tmp_path / "eval", "--run_once")
    assert evaluate.returncode == 0, evaluate.stderr
    assert "do not cover labels 3 to 9" in evaluate.stderr
    names = json.loads((tmp_path / "eval" / "eval.json").read_text())["class_names"]
    assert names == ["cat", "dog", "bird"] + [f"class {i}" for i in range(3, 10)]
    image = tmp_path / "image.png"
    write_png(image, 32, 32)
    predict = python_module("hvd_cifar.predict", "--data_dir", data_dir, "--checkpoint_dir",
                            three_checkpoints, "--top_k", 10, image)
    assert predict.returncode == 0, predict.stderr
    assert "class 9" in predict.stdout and "cat" in predict.stdout


def png_chunk(kind, payload):
    return (len(payload).to_bytes(4, "big") + kind + payload +
            zlib.crc32(kind + payload).to_bytes(4, "big"))


def write_png(path, width, height):
    """A PNG header of any size (the pixels of a small one; a huge one is only declared)."""
    rows = b"".join(b"\0" + b"\x80" * (3 * width) for _ in range(min(height, 32)))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" +
                     png_chunk(b"IHDR", width.to_bytes(4, "big") + height.to_bytes(4, "big") +
                               bytes([8, 2, 0, 0, 0])) +
                     png_chunk(b"IDAT", zlib.compress(rows if width <= 32 else b"")) +
                     png_chunk(b"IEND", b""))


def test_a_decompression_bomb_gets_the_pixel_limit_line(tmp_path):
    image = tmp_path / "bomb.png"
    write_png(image, 100_000, 100_000)
    result = python_module("hvd_cifar.predict", image)
    assert_one_line_error(result, f"{image}: larger than 40,000,000 pixels", status=1)


def test_convert_skips_dangling_links_and_loops_and_names_unreadable_files(tmp_path):
    tree = tmp_path / "tree"
    for split in ("train", "test"):
        folder = tree / split / "cat"
        folder.mkdir(parents=True)
        write_png(folder / "real.png", 32, 32)
    (tree / "train" / "cat" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (tree / "train" / "cat" / "loop.png").symlink_to(tree / "train" / "cat" / "loop.png")
    (tree / "train" / "cat" / "text.png").write_text("not an image")
    refused = python_module("hvd_cifar.data", "convert", tree, tmp_path / "out")
    assert_one_line_error(refused, "3 images", "--skip_bad", status=1)
    assert "BytesIO" not in refused.stderr
    assert "dangling.png (cannot be read: No such file or directory)" in refused.stderr
    assert "loop.png (cannot be read: Too many levels of symbolic links)" in refused.stderr
    skipped = python_module("hvd_cifar.data", "convert", tree, tmp_path / "out", "--skip_bad")
    assert skipped.returncode == 0, skipped.stderr
    assert (tmp_path / "out" / "cifar-10-batches-bin" / "test_batch.bin").exists()


def test_of_two_exports_to_one_file_one_fails_in_one_line(three_checkpoints, tmp_path):
    target = tmp_path / "weights.h5"
    command = [sys.executable, "-m", "hvd_cifar.export", "--checkpoint_dir",
               str(three_checkpoints), "--weights", str(target)]
    jobs = [subprocess.Popen(command, env=ENV, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(job.wait(timeout=300), *job.communicate()) for job in jobs]
    assert sorted(code for code, _, _ in results) == [0, 1], results
    failed = next(r for r in results if r[0] == 1)
    lines = error_lines(failed[2])
    assert len(lines) == 1 and f"--weights {target}" in lines[0], failed[2]
    assert "Traceback" not in failed[2]
    succeeded = next(r for r in results if r[0] == 0)
    assert f"{target}: moving-average weights of step 30" in succeeded[1]


def test_a_short_hang_timeout_waits_out_the_first_steps_tracing(tiny_data, tmp_path):
    result = python_module("hvd_cifar.train", "--data_dir", tiny_data, "--train_dir",
                           tmp_path / "run", "--max_steps", 3, "--hang_timeout_secs", 1,
                           *TRAIN_FLAGS)
    assert result.returncode == 0, result.stderr
    assert "finished at step 3" in result.stdout


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_make_alone_stops_the_job_after_a_checkpoint(tiny_data, tmp_path,
                                                                 signal_number):
    """make passes SIGTERM on to its child but a SIGINT sent to it alone to nobody; the ranks
    see that in make's signal handlers."""
    train_dir = tmp_path / "run"
    with launched(ctrl_c_command("make", tiny_data, train_dir)) as job:
        wait_for_training(train_dir, job)
        os.kill(job.pid, signal_number)  # make's pid only, as a supervisor or `kill` does
        job.communicate(timeout=180)
        assert wait_until_gone(train_dir)
    log = (train_dir / "train.log").read_text()
    name = signal.Signals(signal_number).name
    stopped = re.search(rf"stopped by {name} at step (\d+); checkpoint written", log)
    assert stopped, log[-2000:]
    assert (train_dir / f"ckpt-{stopped.group(1)}.index").exists()
    assert not (train_dir / "run.lock").exists()

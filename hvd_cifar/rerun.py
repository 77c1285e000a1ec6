"""Run a recorded training run again from its run.json, on this host.

    python -m hvd_cifar.rerun RUN_JSON --train_dir NEW [--data_dir D] [--print_command]
    make reproduce FROM=runs/train/run.json [OUT=runs/rerun]

A run.json holds every flag, the ranks, the launcher's controller and a fingerprint of the
training data. This starts `horovodrun -np RANKS` on this host with those flags, a new
--train_dir and --data_dir (by default the recorded one), after checking that the data is the
recorded data. Every rank count runs on one host (oversubscribed when it has fewer cores): the
global batch and so the run's arithmetic are the same. When the rerun has finished, it says
whether its final weights are the recorded run's (their digests in the two run.json files).
"""
if __name__ == "__main__":  # a command: TensorFlow's C++ lines begin at its import
    from hvd_cifar.native_logs import quiet_native_logs
    quiet_native_logs()

import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys

from hvd_cifar.command import UserError, argument, flag, parse_command, run_command, say
from hvd_cifar.data import download, records
from hvd_cifar.train_dir import RUN_RECORD_NAME, holds_a_run

@dataclasses.dataclass
class RerunConfig:
    run_json: str = argument("the run.json of the run to redo (in its train_dir)")
    train_dir: str = flag("runs/rerun", "where the rerun writes; it must not hold a run yet")
    data_dir: str = flag(None, "the data to train on (default: the recorded --data_dir); it "
                         "must have the recorded fingerprint", str)
    print_command: bool = flag(False, "print the command instead of running it")


def read_record(path):
    """The run.json at path as a dict, or a UserError naming what is missing."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not a readable run.json ({error})") from None
    missing = [key for key in ("flags", "ranks") if key not in (record or {})]
    if not isinstance(record, dict) or missing:
        raise UserError(f"{path}: this run.json records no {' and no '.join(missing or ['flags'])}"
                        " (written before runs recorded how to redo them)")
    if record.get("earlier_setups"):
        raise UserError(f"{path}: the run was resumed with another set-up than it started with "
                        "(earlier_setups), so its last flags alone would not redo it: rerun the "
                        "first set-up to the step of the change, then resume with these flags")
    return record


def train_arguments(recorded_flags, train_dir, data_dir):
    """The command-line words that set every recorded training flag, with train_dir and
    data_dir replaced. A flag this code no longer has is left to the trainer to refuse."""
    values = {**recorded_flags, "train_dir": train_dir, "data_dir": data_dir, "fresh": False,
              "take_over_train_dir": False}
    words = []
    for name, value in values.items():
        if value is None or value is False:
            continue  # the default, or a switch that was off
        words += [f"--{name}"] if value is True else [f"--{name}", str(value)]
    return words


def check_data(record, data_dir):
    """UserError unless data_dir holds the training files the record's fingerprint names."""
    expected = record.get("data_fingerprint")
    if record.get("synthetic") or not expected:
        return
    batches_dir = download.ensure_batches_dir(data_dir, fetch=False)
    paths, _ = records.split_files(batches_dir, "train")
    found = records.fingerprint(paths)
    if found != expected:
        raise UserError(f"--data_dir {data_dir}: its training files are not the recorded run's "
                        f"(fingerprint {found}, recorded {expected})")


def rerun_command(config):
    """The horovodrun command line that redoes the recorded run."""
    record = read_record(config.run_json)
    data_dir = config.data_dir or record["flags"].get("data_dir")
    if holds_a_run(config.train_dir):
        raise UserError(f"--train_dir {config.train_dir}: holds a run already; a rerun starts "
                        "from nothing (give a new folder)")
    check_data(record, data_dir)
    ranks = int(record["ranks"])
    controller = "--gloo" if record.get("controller") == "Gloo" else "--mpi"
    bin_dir = os.path.dirname(sys.executable)
    horovodrun = os.path.join(bin_dir, "horovodrun")
    if not os.path.exists(horovodrun):
        horovodrun = shutil.which("horovodrun") or "horovodrun"
    return ([horovodrun, "-np", str(ranks), "-H", f"localhost:{ranks}", controller,
             sys.executable, "-m", "hvd_cifar.train"]
            + train_arguments(record["flags"], config.train_dir, data_dir))


def compare_digests(record, train_dir):
    """One line: whether the rerun ended with the recorded run's weights."""
    rerun = read_record(os.path.join(train_dir, RUN_RECORD_NAME))
    expected, found = record.get("weights_digest"), rerun.get("weights_digest")
    if expected is None:
        return (f"hvd_cifar: the record has no final weights digest (it did not finish, or "
                f"predates them); the rerun's is {found} at step {rerun.get('finished_step')}")
    if record.get("finished_step") != rerun.get("finished_step"):
        return (f"hvd_cifar: the rerun ended at step {rerun.get('finished_step')}, the record at "
                f"{record.get('finished_step')}: their weights are not comparable")
    same = "the same as" if found == expected else "NOT the same as"
    return (f"hvd_cifar: the rerun's final weights ({found}, step {rerun.get('finished_step')}) "
            f"are {same} the recorded run's ({expected})")


def main(argv=None):
    config = parse_command(RerunConfig, "python -m hvd_cifar.rerun",
                           "Run a recorded training run again from its run.json, then compare "
                           "its final weights with the record's.", argv)

    def rerun():
        command = rerun_command(config)
        if config.print_command:
            say(" ".join(shlex.quote(word) for word in command))
            return
        say(f"hvd_cifar: rerunning {config.run_json} into {config.train_dir}")
        # The job gets a terminal's Ctrl-C itself (the same process group) and stops after
        # its checkpoint; this process waits for it, and so ignores the signal.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            status = subprocess.run(command).returncode
        except OSError as error:
            raise UserError(f"cannot start {command[0]}: {error.strerror}") from None
        if status != 0:
            raise UserError(f"the rerun's job failed (exit status {status}); its log: "
                            f"{os.path.join(config.train_dir, 'train.log')}")
        say(compare_digests(read_record(config.run_json), config.train_dir))

    run_command(rerun)


if __name__ == "__main__":
    main()

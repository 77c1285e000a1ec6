"""`python -m hvd_cifar.check`: is a node or an allocation ready to train? Alone, under
horovodrun with MPI and Gloo, across the two namespace hosts; the GPU verdicts with faked
device lists."""
import json
import os
import re
import socket
import sys

import pytest

from hvd_cifar import check, model as model_lib
from helpers import (BIN, expected_devices, expected_gpu_row_without_tensorflow_gpus,
                     gpus_unusable_here, horovodrun, link_bytes, python_module, run,
                     tensorflow_gpu_count)

CHECK_NAMES = ["gpus", "compute_capability", "xla", "allreduce", "bandwidth", "stragglers",
               "input", "train_dir", "data"]
QUICK = ["--step_seconds", "0.5", "--allreduce_repeats", "5", "--batch_size", "16"]


def report_of(result):
    """The JSON report: the last line rank 0 printed (under a launcher, tagged)."""
    lines = [line for line in result.stdout.splitlines() if '"verdict"' in line]
    assert lines, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(lines[-1][lines[-1].index("{"):])


def test_alone_every_check_passes_on_a_host_whose_gpus_tensorflow_sees(tiny_data, tmp_path):
    """On a CPU host every check passes; on one whose nvidia-smi lists GPUs that TensorFlow
    cannot use (a driver without the CUDA libraries), the gpus check alone fails."""
    result = python_module("hvd_cifar.check", "--data_dir", tiny_data, "--train_dir",
                           tmp_path / "run", *QUICK)
    lines = result.stdout.splitlines()
    gpus_unusable = gpus_unusable_here()
    for name in CHECK_NAMES:
        status = "FAIL" if name == "gpus" and gpus_unusable else "PASS"
        assert any(line.startswith(name + " ") and f" {status} " in line for line in lines), \
            (name, result.stdout)
    verdict = "fail" if gpus_unusable else "pass"
    assert lines[-1] == f"verdict: {verdict} (1 rank on 1 host)"
    assert result.returncode == (1 if gpus_unusable else 0), result.stderr[-3000:]
    assert not (tmp_path / "run").exists()  # checking writes nothing


@pytest.mark.parametrize("controller", ["mpi", "gloo"])
def test_two_ranks_report_every_field_and_an_exact_allreduce(tiny_data, tmp_path, controller):
    result = horovodrun(2, controller, "hvd_cifar.check", "--json", "--data_dir", tiny_data,
                        "--train_dir", tmp_path, *QUICK)
    unusable = gpus_unusable_here()
    assert result.returncode == (1 if unusable else 0), result.stderr[-3000:]
    report = report_of(result)
    assert report["ranks"] == 2
    assert report["verdict"] in (("fail",) if unusable else ("pass", "warn"))
    assert [row["rank"] for row in report["per_rank"]] == [0, 1]
    devices = expected_devices(2).split(", ")
    assert [f"{row['rank']}={row['device']}" for row in report["per_rank"]] == devices
    assert all(row["host"] == socket.gethostname() and row["images_per_sec"] > 0
               for row in report["per_rank"])
    allreduce = report["allreduce"]
    assert allreduce["bytes"] == model_lib.NUM_PARAMETERS * 4 and allreduce["correct"]
    # nccl-tests' bus bandwidth of a 2-rank all-reduce equals its algorithm bandwidth.
    assert allreduce["algbw_gbps"] > 0 and allreduce["busbw_gbps"] == allreduce["algbw_gbps"]
    assert allreduce["controller"] == controller.upper().replace("GLOO", "Gloo")
    names = [c["name"] for c in report["checks"]]
    # MPI alone is checked when mpirun started the ranks, not under Gloo.
    assert names == CHECK_NAMES + (["mpi"] if controller == "mpi" else [])
    if controller == "mpi":
        assert report["checks"][-1]["detail"].startswith("MPI alone: all-reduce of 2 ranks")
    versions = report["versions"]
    assert versions["tensorflow"] == "2.15.1" and versions["horovod"] == "0.28.1"
    assert versions["horovod_controllers"] == ["MPI", "Gloo"]
    assert versions["open_mpi"].startswith("mpirun (Open MPI)")


def test_require_gpu_fails_a_host_without_a_usable_gpu_naming_it(tmp_path):
    if tensorflow_gpu_count():
        pytest.skip("TensorFlow sees a GPU on this host: --require_gpu passes here")
    result = python_module("hvd_cifar.check", "--require_gpu", "--train_dir", tmp_path,
                           *QUICK)
    assert result.returncode == 1
    gpus = [line for line in result.stdout.splitlines() if line.startswith("gpus ")]
    status, detail = expected_gpu_row_without_tensorflow_gpus(socket.gethostname(), True)
    assert len(gpus) == 1 and gpus[0].startswith(f"gpus                {status}  ")
    assert gpus[0].endswith(detail) or detail in gpus[0], gpus
    assert result.stdout.splitlines()[-1].startswith("verdict: fail")


GPUS = ["/physical_device:GPU:0", "/physical_device:GPU:1"]
SMI = check.parse_nvidia_smi("0, NVIDIA H100 80GB HBM3, 550.54.15, 9.0\n"
                             "1, NVIDIA H100 80GB HBM3, 550.54.15, 9.0\n")


def test_the_gpu_verdicts_name_the_host_and_the_classic_causes():
    assert check.gpu_verdict("n1", 3, 1, 2, SMI, GPUS, None, False) == (
        "PASS", "rank 3 on n1: GPU 1 NVIDIA H100 80GB HBM3, driver 550.54.15")
    assert check.gpu_verdict("n1", 2, 2, 3, SMI, GPUS, None, False) == (
        "FAIL", "rank 2 on n1 has no GPU: 3 ranks on this host, 2 GPUs (start one rank per "
        "GPU)")
    hidden = check.gpu_verdict("n1", 0, 0, 1, SMI, [], "", False)
    assert hidden[0] == "FAIL" and "CUDA_VISIBLE_DEVICES='' hides them" in hidden[1]
    old = check.parse_nvidia_smi("0, Tesla V100, 470.82.01, 7.0\n")
    too_old = check.gpu_verdict("n2", 0, 0, 1, old, [], None, False)
    assert too_old[0] == "FAIL" and "driver 470.82.01 is too old for CUDA 12.2" in too_old[1]
    missing_libraries = check.gpu_verdict("n1", 0, 0, 1, SMI, [], None, False)
    assert "cannot load the CUDA libraries" in missing_libraries[1]
    assert check.gpu_verdict("n3", 0, 0, 1, None, [], None, False)[0] == "PASS"
    assert check.gpu_verdict("n3", 0, 0, 1, None, [], None, True)[0] == "FAIL"


def test_a_driver_too_old_for_the_builds_cuda_runtime_or_tensorflows_fails_naming_both():
    def smi(driver):
        return check.parse_nvidia_smi(f"0, NVIDIA H200, {driver}, 9.0\n")
    assert check.driver_verdict("n1", 0, smi("535.104.05"), "13.0") == (
        "FAIL", "rank 0 on n1: driver 535.104.05 supports CUDA 12; Horovod's build (CUDA 13.0, "
        "its runtime linked in) needs 580 or newer")
    assert check.driver_verdict("n1", 1, smi("520.61.05"), "12.4") == (
        "FAIL", "rank 1 on n1: driver 520.61.05 supports CUDA 11 or older; TensorFlow 2.15's "
        "CUDA 12.2 needs 525.60 or newer; Horovod's build (CUDA 12.4, its runtime linked in) "
        "needs 525.60 or newer")
    assert check.driver_verdict("n2", 0, smi("580.159.03"), "13.0") == (
        "PASS", "rank 0 on n2: driver 580.159.03 (CUDA 13) runs TensorFlow 2.15's CUDA 12.2 and "
        "Horovod's build (CUDA 13.0, its runtime linked in)")
    assert check.driver_verdict("n2", 0, smi("535.104.05"), None)[0] == "PASS"
    assert check.driver_verdict("n3", 0, None, "13.0") is None  # no driver to judge


def test_the_horovod_build_record_is_read_from_the_environment(tmp_path, monkeypatch):
    record = tmp_path / "horovod_build.json"
    monkeypatch.setattr(check, "HOROVOD_BUILD_RECORD", str(record))
    assert check.horovod_build_cuda() is None
    record.write_text('{"build": "nccl", "cuda": "13.0"}')
    assert check.horovod_build_cuda() == "13.0"


def test_an_input_slower_than_the_step_is_named_with_the_way_out():
    rows = [{"rank": 0, "host": "n0", "images_per_sec": 50_000.0, "input_images_per_sec":
             120_000.0, "augment_on": "host", "cores": 24, "local_size": 8},
            {"rank": 1, "host": "n1", "images_per_sec": 50_000.0, "input_images_per_sec":
             9_000.0, "augment_on": "host", "cores": 12, "local_size": 8}]
    status, detail = check.input_verdict(rows)
    assert status == "WARN"
    assert detail == ("rank 1 on n1: its input (distortions on the host) gives 9,000 images/s, "
                      "its training step takes 50,000, so the step waits for input (use "
                      "--augment_on device, or give each rank more cores: 12 cores for 8 "
                      "ranks on this host)")
    status, detail = check.input_verdict(rows[:1])
    assert (status, detail) == ("PASS", "input outpaces the training step on every rank, at "
                                "least 2.4x (distortions on the host)")
    slow_device = [{**rows[1], "augment_on": "device"}]
    assert check.input_verdict(slow_device)[1].endswith("so the step waits for input")


@pytest.mark.parametrize("place", ["host", "device"])
@pytest.mark.parametrize("data_usable", [True, False])
def test_the_input_is_timed_where_augment_on_puts_it(tiny_data, tmp_path, place, data_usable):
    """Both paths build batches of the rank's shard (here on the CPU), from the data or, when
    the data is not usable, from random records in a temporary folder."""
    config = check.CheckConfig(data_dir=str(tiny_data if data_usable else tmp_path),
                               batch_size=16)
    rate = check.input_images_per_sec(config, rank=1, size=2, place=place,
                                      data_usable=data_usable, seconds=0.1)
    assert rate > 0
    assert os.listdir(tmp_path) == []  # the random records are gone with their folder


def test_capabilities_and_stragglers():
    assert check.capability_verdict([(9, 0), (9, 0)])[0] == "PASS"
    assert check.capability_verdict([(6, 1)]) == (
        "WARN", "compute capability 6.1: below 7.0 --use_fp16 gains little (no tensor cores)")
    rows = [{"rank": r, "host": f"n{r}", "images_per_sec": rate}
            for r, rate in enumerate([1000.0, 990.0, 1010.0, 700.0])]
    status, detail = check.straggler_verdict(rows)
    assert status == "WARN" and detail.endswith("stragglers: rank 3 on n3 (700 images/s)")
    assert check.straggler_verdict(rows[:3])[0] == "PASS"


def test_across_two_hosts_the_allreduce_crosses_the_links(namespace_hosts, tiny_data, tmp_path):
    before = {link: link_bytes(link) for link in ("vethA", "vethB")}
    result = run([os.path.join(BIN, "horovodrun"), "-np", "2", "-H", "10.200.0.2:1,10.200.0.3:1",
                  "--gloo", "--network-interface", "hvdbr0", os.path.join(BIN, "python"), "-m",
                  "hvd_cifar.check", "--json", "--data_dir", tiny_data, "--train_dir",
                  tmp_path, *QUICK], env=namespace_hosts)
    assert result.returncode == 0, result.stderr[-3000:]
    report = report_of(result)
    assert report["ranks"] == 2 and report["allreduce"]["correct"]
    assert report["allreduce"]["busbw_gbps"] > 0
    for link, count in before.items():  # 25 all-reduces of 4.27 MB went over both links
        assert link_bytes(link) - count > 50 * 1_000_000, link


FLAG_MODULES = ["hvd_cifar.train", "hvd_cifar.evaluate", "hvd_cifar.check"]


CONFIG_CLASSES = {"hvd_cifar.train": "TrainConfig", "hvd_cifar.evaluate": "EvalConfig",
                  "hvd_cifar.check": "CheckConfig"}


def all_flags(module):
    """Every flag of a command, in both spellings, each with a value it accepts where it takes
    one (its default, else its first choice, or 1)."""
    import dataclasses
    import importlib
    fields = [field for field in dataclasses.fields(getattr(importlib.import_module(module),
                                                             CONFIG_CLASSES[module]))
              if not field.metadata.get("not_a_flag")]  # a setting the command works out
    flags = []
    for field in fields:
        for spelling in sorted({field.name, field.name.replace("_", "-")}):
            flags.append(f"--{spelling}")
            if field.default is not False:
                choices = field.metadata.get("choices")
                flags.append(choices[0] if choices and field.default is None else
                             "1" if field.default is None else str(field.default))
    return flags


# Run by horovodrun: the command's own parser reads what reached the process, and the values
# it parsed are printed, so a flag horovodrun took, dropped or changed shows.
PARSE = """
import importlib, json, sys
from hvd_cifar.command import flag_values, parse_command
module, config_class = sys.argv[1], sys.argv[2]
config = parse_command(getattr(importlib.import_module(module), config_class), module, "",
                       sys.argv[3:])
print("PARSED " + json.dumps({k: str(v) for k, v in flag_values(config).items()}))
"""


@pytest.mark.parametrize("module", FLAG_MODULES)
def test_every_flag_reaches_the_command_through_horovodrun(module):
    flags = all_flags(module)
    result = run([os.path.join(BIN, "horovodrun"), "-np", "1", "--gloo", sys.executable, "-c",
                  PARSE, module, CONFIG_CLASSES[module], *flags])
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(line for line in result.stdout.splitlines() if "PARSED " in line)
    parsed = json.loads(line.split("PARSED ", 1)[1])
    sent = {}
    for index, word in enumerate(flags):
        if word.startswith("--"):
            taking = index + 1 < len(flags) and not flags[index + 1].startswith("--")
            sent[word[2:].replace("-", "_")] = flags[index + 1] if taking else "True"
    assert sorted(parsed) == sorted(sent)
    # A float flag given 1 parses as 1.0; every other value comes back as it was sent.
    assert all(parsed[name] in (value, f"{float(value)}" if value == "1" else value)
               for name, value in sent.items()), (parsed, sent)


def test_a_horovod_timeline_is_written_by_rank_0(tiny_data, tmp_path):
    timeline = tmp_path / "timeline.json"
    result = horovodrun(2, "gloo", "hvd_cifar.train", "--data_dir", tiny_data, "--train_dir",
                        tmp_path / "run", "--max_steps", 4, "--batch_size", 8, "--no_download",
                        "--horovod_timeline", timeline, "--horovod_timeline_mark_cycles")
    assert result.returncode == 0, result.stderr[-3000:]
    text = timeline.read_text()
    assert text.startswith("[")
    for event in ("NEGOTIATE_ALLREDUCE", "ALLREDUCE", "CYCLE_START"):
        assert event in text, event


def test_make_train_is_a_clean_first_run(tiny_data, tmp_path):
    result = run(["make", "--no-print-directory", "train", f"DATA_DIR={tiny_data}",
                  f"TRAIN_DIR={tmp_path / 'run'}", "STEPS=4", "TRAIN_FLAGS=--batch_size 16"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    output = result.stdout + result.stderr
    # Rank 0's lines arrive whole and without the launcher's tag.
    assert [line for line in output.splitlines() if "<stdout>:" in line] == []
    assert re.search(r"^hvd_cifar: finished at step 4; weights sha256 by rank: "
                     r"0=[0-9a-f]{16} 1=[0-9a-f]{16}$", result.stdout, re.MULTILINE)
    # TensorFlow's C++ start-up lines stay out, the launcher's included.
    assert "oneDNN" not in output and "cpu_feature_guard" not in output
    # The phases, each timed, and the estimate before training.
    assert re.search(r"^make: phase 3 of 4: training 4 steps on 2 ranks; estimate: about \d+ s",
                     result.stdout, re.MULTILINE)
    assert re.search(r"^make: training took \d+ s$", result.stdout, re.MULTILINE)
    assert re.search(r"^make: evaluation took \d+ s; all of make train ", result.stdout,
                     re.MULTILINE)
    lines = result.stdout.splitlines()
    assert f"make: the run is in {tmp_path / 'run'}" in lines[-5]
    assert "tensorboard --logdir" in lines[-4] and "hvd_cifar.predict" in lines[-2]

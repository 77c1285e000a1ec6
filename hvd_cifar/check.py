"""Is this node, or this whole allocation, ready to train? Started exactly like training:

    python -m hvd_cifar.check                               (this host alone)
    horovodrun -np 8 -hostfile hosts python -m hvd_cifar.check --data_dir /shared/cifar
    mpirun -np 8 python -m hvd_cifar.check    |    srun python -m hvd_cifar.check
    sbatch slurm/check.sh

Every rank checks its GPUs against nvidia-smi, compiles with XLA, takes part in an all-reduce
and a broadcast whose results are known, times the all-reduce of one step's gradients, its own
training step and its input (a warning when the input is the slower), and looks at the data;
launched by mpirun or srun it also checks MPI alone (mpi4py). Rank 0 prints one line a check,
PASS / WARN / FAIL, then the verdict (--json: one JSON object, the last line). Exit status 0
for pass or warn, 1 for fail.
"""
if __name__ == "__main__":  # a command: TensorFlow's C++ lines begin at its import
    from hvd_cifar.native_logs import quiet_native_logs
    quiet_native_logs()

import dataclasses
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import urllib.request

import numpy as np
import tensorflow as tf
import horovod
import horovod.tensorflow as hvd

from hvd_cifar import model as model_lib
from hvd_cifar.collectives import barrier
from hvd_cifar.data import download, pipeline, records
from hvd_cifar import rank_setup
from hvd_cifar.rank_setup import controller_name, determinism_words, xla_compiles
from hvd_cifar.command import (DEFAULT_TRAIN_DIR, DeterminismFlags, DeviceFlags, TimelineFlags,
                               UserError, batch_size_int, count, first_line, flag, parse_command,
                               positive_float, positive_int, run_command, say)

# Random records in each training file when the check has no data to measure the input on.
INPUT_RECORDS = 1_000
# A GPU below this compute capability gains little from float16 (no tensor cores).
MIXED_PRECISION_CAPABILITY = (7, 0)
# A rank whose training step is this much slower than the median one holds the others back.
STRAGGLER_FACTOR = 1.2


def oldest_drivers():
    """{CUDA major release: the oldest driver (major, minor) that runs it}, from the table
    launch/install.sh reads too."""
    with open(os.path.join(os.path.dirname(__file__), "cuda_drivers.json")) as f:
        table = json.load(f)
    return {int(release): tuple(int(part) for part in (driver + ".0").split(".")[:2])
            for release, driver in table.items() if release.isdigit()}


# Horovod links the CUDA runtime it was built with statically, so its build's release needs
# the oldest driver of that release too.
OLDEST_DRIVER_BY_CUDA = oldest_drivers()
# TensorFlow 2.15 runs CUDA 12.2.
MINIMUM_DRIVER = OLDEST_DRIVER_BY_CUDA[12]
# What launch/install.sh records about the Horovod build it installed into this environment.
HOROVOD_BUILD_RECORD = os.path.join(sys.prefix, "share", "hvd_cifar", "horovod_build.json")


@dataclasses.dataclass
class CheckConfig(DeviceFlags, TimelineFlags, DeterminismFlags, download.DataSourceFlags,
                  pipeline.AugmentFlags):
    """The check's flags; the data flags are training's, so the check sees what it will."""
    train_dir: str = flag(DEFAULT_TRAIN_DIR, "the folder rank 0 will write checkpoints to")
    host_report: bool = flag(False, "print one line of key=value facts about this host "
                             "(versions and Horovod build, GPUs, address, data) without "
                             "starting Horovod, and exit; launch/check_cluster.sh compares "
                             "the hosts' lines")
    batch_size: int = flag(128, "examples a rank processes in one timed step", batch_size_int)
    step_seconds: float = flag(3.0, "how long each rank times its training step",
                               positive_float)
    allreduce_repeats: int = flag(20, "timed all-reduces of one step's gradients",
                                  positive_int)
    require_gpu: bool = flag(False, "fail when a rank has no GPU (by default a CPU job passes)")
    json: bool = flag(False, "print the report as one JSON object (the last line)")


# ---------------------------------------------------------------------------------------------
# Facts about this rank's host (no Horovod)

def nvidia_smi_gpus():
    """[{index, name, driver, compute_capability}] from nvidia-smi, [] when it lists none, or
    None when there is no nvidia-smi (or it fails, e.g. without a driver)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        listing = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name,driver_version,compute_cap",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if listing.returncode != 0:
        return None
    return parse_nvidia_smi(listing.stdout)


def parse_nvidia_smi(text):
    gpus = []
    for line in text.strip().splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) >= 3:
            gpus.append({"index": fields[0], "name": fields[1], "driver": fields[2],
                         "compute_capability": fields[3] if len(fields) > 3 else None})
    return gpus


def driver_too_old(driver):
    try:
        return tuple(int(part) for part in driver.split(".")[:2]) < MINIMUM_DRIVER
    except ValueError:
        return False


def horovod_build_cuda():
    """The CUDA release Horovod's NCCL build was compiled with (install.sh records it), or
    None (a CPU build, or an install that did not record it)."""
    try:
        with open(HOROVOD_BUILD_RECORD) as f:
            return json.load(f).get("cuda")
    except (OSError, ValueError, AttributeError):
        return None


def version_tuple(text):
    try:
        return tuple(int(part) for part in text.split(".")[:2])
    except (ValueError, AttributeError):
        return None


def driver_supports(driver):
    """The newest CUDA major release a driver version runs, in words."""
    version = version_tuple(driver)
    newest = [cuda for cuda, oldest in OLDEST_DRIVER_BY_CUDA.items() if version >= oldest]
    return f"CUDA {max(newest)}" if newest else "CUDA 11 or older"


def driver_verdict(host, rank, smi_gpus, horovod_cuda):
    """(status, detail) of this rank's NVIDIA driver against TensorFlow's CUDA 12.2 and the
    CUDA release of Horovod's build; None without a driver."""
    if not smi_gpus:
        return None
    driver = smi_gpus[0]["driver"]
    version = version_tuple(driver)
    if version is None:
        return "WARN", f"rank {rank} on {host}: driver version {driver!r} not understood"
    needs = [(MINIMUM_DRIVER, "TensorFlow 2.15's CUDA 12.2")]
    major = int(horovod_cuda.split(".")[0]) if horovod_cuda else None
    if major in OLDEST_DRIVER_BY_CUDA:
        needs.append((OLDEST_DRIVER_BY_CUDA[major],
                      f"Horovod's build (CUDA {horovod_cuda}, its runtime linked in)"))
    missing = [(oldest, who) for oldest, who in needs if version < oldest]
    if missing:
        def words(oldest):
            return f"{oldest[0]}.{oldest[1]:02d}" if oldest[1] else str(oldest[0])
        return "FAIL", (f"rank {rank} on {host}: driver {driver} supports {driver_supports(driver)}"
                        + "".join(f"; {who} needs {words(oldest)} or newer"
                                  for oldest, who in missing))
    return "PASS", (f"rank {rank} on {host}: driver {driver} ({driver_supports(driver)}) runs "
                    + " and ".join(who for _, who in needs))


def gpu_verdict(host, rank, local_rank, local_size, smi_gpus, tf_gpus, visible_devices,
                require_gpu):
    """(status, detail) of one rank's GPUs: what nvidia-smi lists (None: no nvidia-smi)
    against what TensorFlow sees, with the classic causes named."""
    listed = len(smi_gpus or [])
    if listed and not tf_gpus:
        driver = smi_gpus[0]["driver"]
        if visible_devices is not None and visible_devices.strip() in ("", "-1", "none"):
            cause = f"CUDA_VISIBLE_DEVICES={visible_devices!r} hides them"
        elif driver_too_old(driver):
            cause = (f"driver {driver} is too old for CUDA 12.2 (TensorFlow 2.15 needs "
                     f"{MINIMUM_DRIVER[0]}.{MINIMUM_DRIVER[1]} or newer)")
        else:
            cause = ("TensorFlow cannot load the CUDA libraries (install "
                     "tensorflow[and-cuda]==2.15.1: HVD_CIFAR_GPU=1 make install)")
        return "FAIL", f"rank {rank} on {host}: nvidia-smi lists {listed} GPUs, TensorFlow " \
                       f"sees none: {cause}"
    if tf_gpus and local_rank >= len(tf_gpus):
        return "FAIL", (f"rank {rank} on {host} has no GPU: {local_size} ranks on this host, "
                        f"{len(tf_gpus)} GPUs (start one rank per GPU)")
    if not tf_gpus:
        if require_gpu:
            return "FAIL", (f"rank {rank} on {host} has no GPU (--require_gpu): "
                            + ("no nvidia-smi, so no NVIDIA driver" if smi_gpus is None
                               else "nvidia-smi lists none"))
        return "PASS", f"rank {rank} on {host}: no GPU, a CPU rank"
    name = smi_gpus[local_rank]["name"] if smi_gpus and local_rank < len(smi_gpus) else \
        tf_gpus[local_rank]
    driver = f", driver {smi_gpus[0]['driver']}" if smi_gpus else ""
    return "PASS", f"rank {rank} on {host}: GPU {local_rank} {name}{driver}"


def capability_verdict(capabilities):
    """(status, detail) for the compute capabilities (major, minor) the ranks' GPUs have."""
    if not capabilities:
        return "PASS", "no GPU: mixed precision (--use_fp16) would not pay off on CPU"
    low = sorted({c for c in capabilities if tuple(c) < MIXED_PRECISION_CAPABILITY})
    shown = ", ".join(sorted({f"{c[0]}.{c[1]}" for c in capabilities}))
    if low:
        return "WARN", (f"compute capability {shown}: below 7.0 --use_fp16 gains little "
                        "(no tensor cores)")
    return "PASS", f"compute capability {shown}: --use_fp16 pays off"


def straggler_verdict(rows):
    """(status, detail) from every rank's training rate: a rank more than STRAGGLER_FACTOR
    slower than the median holds the whole job back."""
    rates = [row["images_per_sec"] for row in rows]
    median = statistics.median(rates)
    slow = [row for row in rows if row["images_per_sec"] * STRAGGLER_FACTOR < median]
    summary = f"median {median:,.0f} images/s a rank, slowest {min(rates):,.0f}"
    if slow:
        return "WARN", summary + "; stragglers: " + ", ".join(
            f"rank {row['rank']} on {row['host']} ({row['images_per_sec']:,.0f} images/s)"
            for row in slow)
    return "PASS", summary


def input_verdict(rows):
    """(status, detail) from every rank's input rate against its training step's: a rank whose
    input is slower waits for it at every step."""
    slow = [row for row in rows if row["input_images_per_sec"] < row["images_per_sec"]]
    if slow:
        return "WARN", "; ".join(
            f"rank {row['rank']} on {row['host']}: its input (distortions on the "
            f"{row['augment_on']}) gives {row['input_images_per_sec']:,.0f} images/s, its "
            f"training step takes {row['images_per_sec']:,.0f}, so the step waits for input"
            + (" (use --augment_on device, or give each rank more cores: "
               f"{row['cores']} cores for {row['local_size']} ranks on this host)"
               if row["augment_on"] == "host" else "") for row in slow)
    margin = min(row["input_images_per_sec"] / row["images_per_sec"] for row in rows)
    places = sorted({row["augment_on"] for row in rows})
    return "PASS", (f"input outpaces the training step on every rank, at least {margin:.1f}x "
                    f"(distortions on the {' and '.join(places)})")


def input_images_per_sec(config, rank, size, place, data_usable, seconds):
    """This rank's input rate (batches of its shard where --augment_on puts them), from the
    data when it is usable (data_verdict passed), else from random records."""
    with tempfile.TemporaryDirectory(prefix="hvd_cifar-check-") as scratch:
        batches_dir = os.path.join(config.data_dir, records.BATCHES_DIR)
        if not (data_usable and os.path.isdir(batches_dir)):
            batches_dir = records.write_random_batches_dir(scratch, INPUT_RECORDS, seed=rank)
        paths, num_records = records.split_files(batches_dir, "train")
        shard = pipeline.Shard(paths, num_records, config.batch_size, size, rank,
                               device=None if place == "device" else "/cpu:0")
        batches = shard.device_batches() if place == "device" else iter(shard.host_dataset())
        next(batches)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or count < 3:
            images, _ = next(batches)
            count += 1
        images.numpy()
        return count * config.batch_size / (time.perf_counter() - start)


def data_verdict(config):
    """(status, detail) of the data as this host sees it: FAIL for whatever training would
    refuse at its start."""
    data_dir = config.data_dir
    batches_dir = os.path.join(data_dir, records.BATCHES_DIR)
    archive = os.path.join(data_dir, download.ARCHIVE_NAME)
    try:
        if os.path.isdir(batches_dir):
            _, num_train = records.split_files(batches_dir, "train")
            _, num_test = records.split_files(batches_dir, "test")
            return "PASS", f"{batches_dir}: {num_train} training and {num_test} test records"
        if os.path.isfile(archive):
            download.check_sha256(archive, config.data_sha256)
            return "PASS", f"{archive} (its sha256 matches; extracted at the start of training)"
    except UserError as error:
        return "FAIL", str(error)
    if config.no_download:
        return "FAIL", (f"no data in {data_dir} and --no_download is set: training would stop "
                        f"at once (put {records.BATCHES_DIR}/ or {download.ARCHIVE_NAME} there)")
    return "WARN", (f"no data in {data_dir}: training downloads {download.ARCHIVE_NAME} there "
                    "(needs internet, or --data_url)")


def train_dir_verdict(train_dir):
    folder = train_dir
    while not os.path.exists(folder):  # the nearest folder that exists must let us create it
        folder = os.path.dirname(os.path.abspath(folder))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        return "FAIL", f"--train_dir {train_dir} is not writable (at {folder})"
    free = shutil.disk_usage(folder).free
    return "PASS", f"{train_dir} writable, {free / 1e9:.1f} GB free"


def open_mpi_version():
    try:
        out = subprocess.run(["mpirun", "--version"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.splitlines()[0].strip() if out.strip() else None


def launched_by_mpi():
    """mpirun (not horovodrun --gloo) or srun started this process."""
    return "OMPI_COMM_WORLD_SIZE" in os.environ or "PMI_SIZE" in os.environ or (
        "SLURM_PROCID" in os.environ and "HOROVOD_RANK" not in os.environ)


def mpi_check():
    """Before Horovod starts: MPI on its own (mpi4py), so a failure says whether MPI or Horovod
    is at fault. (status, detail), or None when MPI did not start this process."""
    if not launched_by_mpi():
        return None
    try:
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        total = comm.allreduce(comm.Get_rank() + 1)
        hosts = comm.allgather(socket.gethostname())
    except Exception as error:  # mpi4py raises MPI.Exception and import errors alike
        return "FAIL", f"MPI alone fails on {socket.gethostname()}: {error}"
    size = comm.Get_size()
    if total != size * (size + 1) // 2:
        return "FAIL", f"MPI's all-reduce summed {total}, expected {size * (size + 1) // 2}"
    return "PASS", (f"MPI alone: all-reduce of {size} ranks exact on "
                    f"{count(len(set(hosts)), 'host')} ({', '.join(sorted(set(hosts)))})")


# ---------------------------------------------------------------------------------------------
# The checks that need every rank

def start_like_training(config):
    """Start this process as training does; the facts of its place in the job. A device that
    cannot be pinned is reported, not raised: the report says which rank it was."""
    device, deterministic, mpi = rank_setup.start_like_training(
        config, before_horovod=mpi_check, report_device_error=True)
    return {"rank": hvd.rank(), "size": hvd.size(), "local_rank": hvd.local_rank(),
            "local_size": hvd.local_size(), "host": socket.gethostname(), "mpi": mpi,
            "device": device, "deterministic": deterministic}


def gpu_facts(config, rank):
    """This rank's GPUs as TensorFlow and nvidia-smi see them, their verdict and capability."""
    tf_gpus = [gpu.name for gpu in tf.config.list_physical_devices("GPU")]
    smi = nvidia_smi_gpus()
    status = gpu_verdict(rank["host"], rank["rank"], rank["local_rank"], rank["local_size"], smi,
                         tf_gpus, os.environ.get("CUDA_VISIBLE_DEVICES"), config.require_gpu)
    gpus = tf.config.list_physical_devices("GPU")
    capability = (tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
                  if gpus else None)
    driver = driver_verdict(rank["host"], rank["rank"], smi, horovod_build_cuda())
    return {"gpu": status, "tf_gpus": len(tf_gpus), "capability": capability, "driver": driver}


def xla_verdict(rank, host):
    """(status, detail): XLA compiles and runs a small function (--xla compiles the forward
    pass and loss the same way)."""
    try:
        compiled = tf.function(lambda x: tf.reduce_sum(tf.nn.relu(x) * 2.0), jit_compile=True)
        if float(compiled(tf.ones([4, 4]))) == 32.0:
            return "PASS", "XLA compiled and ran a test function"
        return "FAIL", "XLA computed a wrong value"
    except Exception as error:  # XLA reports failures as many exception types
        return "FAIL", f"XLA on rank {rank} on {host}: {first_line(error)[:200]}"


def collectives_exact(rank, size):
    """Whether an all-reduce and a broadcast came back exact (small integers are exact in
    float32)."""
    known = np.arange(1000, dtype=np.float32) * (rank + 1)
    summed = hvd.allreduce(tf.constant(known), op=hvd.Sum, name="check_sum").numpy()
    expected = np.arange(1000, dtype=np.float32) * (size * (size + 1) // 2)
    broadcast = hvd.broadcast(tf.constant(np.arange(100, dtype=np.float32) + 42 + rank),
                              root_rank=0, name="check_broadcast").numpy()
    return bool(np.array_equal(summed, expected)) and bool(
        np.array_equal(broadcast, np.arange(100, dtype=np.float32) + 42))


def allreduce_bandwidth(repeats, size):
    """One step's gradients all-reduced, timed, reported as nccl-tests does."""
    gradients = tf.ones([model_lib.NUM_PARAMETERS], tf.float32)
    nbytes = model_lib.NUM_PARAMETERS * 4
    for _ in range(3):
        hvd.allreduce(gradients, op=hvd.Sum, name="check_bandwidth").numpy()
    barrier("check_barrier")
    start = time.perf_counter()
    for _ in range(repeats):
        reduced = hvd.allreduce(gradients, op=hvd.Sum, name="check_bandwidth")
    reduced.numpy()
    seconds = (time.perf_counter() - start) / repeats
    algbw = nbytes / seconds / 1e9
    return {"bytes": nbytes, "seconds": round(seconds, 6), "algbw_gbps": round(algbw, 3),
            "busbw_gbps": round(algbw * 2 * (size - 1) / size, 3),
            "controller": controller_name()}


def step_images_per_sec(config, rank):
    """This rank's forward and backward pass alone (the model and its loss, no optimizer, no
    all-reduce), so a slow rank shows as itself rather than through the others waiting."""
    model = model_lib.inference()
    images = tf.random.normal([config.batch_size, pipeline.IMAGE_SIZE, pipeline.IMAGE_SIZE, 3],
                              seed=rank)
    labels = tf.random.uniform([config.batch_size], 0, 10, tf.int32, seed=rank)
    loss_of = tf.function(lambda: model_lib.loss(model, model(images, training=True), labels),
                          jit_compile=xla_compiles(config.xla))

    @tf.function
    def forward_and_backward():
        with tf.GradientTape() as tape:
            loss = loss_of()
        return tape.gradient(loss, model.trainable_variables)[0]

    forward_and_backward()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < config.step_seconds or steps < 3:
        forward_and_backward().numpy()
        steps += 1
    return steps * config.batch_size / (time.perf_counter() - start)


def version_facts(config, deterministic):
    build = tf.sysconfig.get_build_info()
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "tensorflow_cuda": build.get("cuda_version"),
        "tensorflow_cudnn": build.get("cudnn_version"),
        "horovod": horovod.__version__,
        "horovod_controllers": [name for name, built in (("MPI", hvd.mpi_built()),
                                                         ("Gloo", hvd.gloo_built())) if built],
        "horovod_nccl": bool(hvd.nccl_built()),
        "horovod_cuda": horovod_build_cuda(),
        "open_mpi": open_mpi_version(),
        "deterministic_ops": deterministic,
        "determinism": determinism_words(xla_compiles(config.xla)),
    }


def run_checks(config):
    """Every rank's checks; rank 0 gets the report of all, the other ranks None."""
    rank = start_like_training(config)
    facts = {key: rank[key] for key in ("rank", "host", "device", "mpi", "local_size")}
    facts.update(gpu_facts(config, rank))
    facts["xla"] = xla_verdict(rank["rank"], rank["host"])
    facts["correct"] = collectives_exact(rank["rank"], rank["size"])
    allreduce = allreduce_bandwidth(config.allreduce_repeats, rank["size"])
    facts["images_per_sec"] = round(step_images_per_sec(config, rank["rank"]), 1)
    facts["data"] = data_verdict(config)  # reads every record file: once
    facts["augment_on"] = pipeline.augmentation_place(config.augment_on)
    facts["input_images_per_sec"] = round(input_images_per_sec(
        config, rank["rank"], rank["size"], facts["augment_on"], facts["data"][0] == "PASS",
        config.step_seconds), 1)
    facts["cores"] = len(os.sched_getaffinity(0))
    every_rank = hvd.allgather_object(facts)  # Horovod: rank 0 reports for all
    if rank["rank"] != 0:
        return None
    allreduce["correct"] = all(f["correct"] for f in every_rank)
    return report(config, every_rank, allreduce, version_facts(config, rank["deterministic"]))


def report(config, every_rank, allreduce, versions):
    """The JSON report of every rank's facts."""
    checks = []

    def add(name, status, detail):
        checks.append({"name": name, "status": status, "detail": detail})

    gpu_rows = [f["gpu"] for f in every_rank]
    failing = [detail for status, detail in gpu_rows if status == "FAIL"]
    if failing:
        add("gpus", "FAIL", "; ".join(failing))
    elif any(f["tf_gpus"] for f in every_rank):
        add("gpus", "PASS", "; ".join(detail for _, detail in gpu_rows))
    else:
        hosts = count(len({f["host"] for f in every_rank}), "host")
        add("gpus", "PASS", f"no GPU on {hosts}: a CPU "
            "job (--require_gpu makes this a failure)")
    driver_rows = [f["driver"] for f in every_rank if f["driver"]]
    if driver_rows:
        statuses = {status for status, _ in driver_rows}
        worst = "FAIL" if "FAIL" in statuses else "WARN" if "WARN" in statuses else "PASS"
        add("driver", worst, "; ".join(detail for status, detail in driver_rows
                                       if status == worst))
    add("compute_capability", *capability_verdict(
        [tuple(f["capability"]) for f in every_rank if f["capability"]]))
    xla_failing = [detail for status, detail in (f["xla"] for f in every_rank)
                   if status == "FAIL"]
    add("xla", "FAIL" if xla_failing else "PASS",
        "; ".join(xla_failing) or f"compiled on all {len(every_rank)} ranks")
    ranks = len(every_rank)
    if allreduce["correct"]:
        add("allreduce", "PASS", f"sum and broadcast exact over {ranks} ranks "
            f"({allreduce['controller']})")
    else:
        wrong = [f"rank {f['rank']} on {f['host']}" for f in every_rank if not f["correct"]]
        add("allreduce", "FAIL", "wrong sum or broadcast on " + ", ".join(wrong))
    if ranks > 1:
        add("bandwidth", "PASS", f"{allreduce['bytes'] / 1e6:.2f} MB all-reduce (one step's "
            f"gradients): {allreduce['seconds'] * 1e3:.2f} ms, algbw "
            f"{allreduce['algbw_gbps']:.3f} GB/s, busbw {allreduce['busbw_gbps']:.3f} GB/s")
    else:
        add("bandwidth", "PASS", "one rank: nothing crosses a link")
    add("stragglers", *straggler_verdict(every_rank))
    add("input", *input_verdict(every_rank))
    add("train_dir", *train_dir_verdict(config.train_dir))
    data_rows = [(f["host"], f["data"]) for f in every_rank]
    worst = max(data_rows, key=lambda row: ("PASS", "WARN", "FAIL").index(row[1][0]))
    add("data", worst[1][0], f"{worst[0]}: {worst[1][1]}")
    mpi_rows = [f["mpi"] for f in every_rank if f["mpi"] is not None]
    if mpi_rows:
        failing = [detail for status, detail in mpi_rows if status == "FAIL"]
        add("mpi", "FAIL" if failing else "PASS", "; ".join(failing) or mpi_rows[0][1])
    statuses = {check["status"] for check in checks}
    verdict = "fail" if "FAIL" in statuses else "warn" if "WARN" in statuses else "pass"
    return {"ranks": ranks, "hosts": sorted({f["host"] for f in every_rank}),
            "verdict": verdict, "checks": checks,
            "per_rank": [{key: f[key] for key in ("rank", "host", "device", "images_per_sec",
                                                  "augment_on", "input_images_per_sec")}
                         for f in every_rank],
            "allreduce": allreduce, "versions": versions}


def table(result):
    width = max(len(check["name"]) for check in result["checks"])
    lines = [f"{check['name']:<{width}}  {check['status']:<4}  {check['detail']}"
             for check in result["checks"]]
    versions = result["versions"]
    lines.append(f"{'versions':<{width}}  {'':<4}  Python {versions['python']}, TensorFlow "
                 f"{versions['tensorflow']} (CUDA {versions['tensorflow_cuda'] or '-'}, cuDNN "
                 f"{versions['tensorflow_cudnn'] or '-'}), Horovod {versions['horovod']} "
                 f"({'/'.join(versions['horovod_controllers'])}"
                 f"{', NCCL' if versions['horovod_nccl'] else ', no NCCL'}"
                 f"{', CUDA ' + versions['horovod_cuda'] if versions.get('horovod_cuda') else ''}"
                 "), "
                 f"{versions['open_mpi'] or 'no Open MPI'}; {versions['determinism']}")
    lines.append(f"verdict: {result['verdict']} ({count(result['ranks'], 'rank')} on "
                 f"{count(len(result['hosts']), 'host')})")
    return "\n".join(lines)


def host_report(data_dir, data_url):
    """One line of key=value pairs describing this host: what must match on every host of a
    job, and what it has."""
    build = "".join(name for name, built in (("T", True), ("G", hvd.gloo_built()),
                    ("M", hvd.mpi_built()), ("N", hvd.nccl_built())) if built)
    has_data = (os.path.isdir(os.path.join(data_dir, records.BATCHES_DIR)) or
                os.path.isfile(os.path.join(data_dir, download.ARCHIVE_NAME)))
    if not has_data:
        try:
            urllib.request.urlopen(urllib.request.Request(data_url, method="HEAD"), timeout=5)
            has_data = "downloadable"
        except Exception:  # any failure means: not reachable from here
            has_data = False
    gpus = len(tf.config.list_physical_devices("GPU"))
    hostname = socket.gethostname()
    return " ".join([f"versions=python{platform.python_version()},tensorflow{tf.__version__},"
                     f"horovod{horovod.__version__},build{build}", f"gpus={gpus}",
                     f"hostname={hostname}", f"address={socket.gethostbyname(hostname)}",
                     f"data={has_data}"])


def check(config):
    if config.host_report:
        say(host_report(config.data_dir, config.data_url))
        return
    result = run_checks(config)
    if result is not None:
        say(json.dumps(result) if config.json else table(result))
        failed = result["verdict"] == "fail"
    else:
        failed = False
    # Horovod: every rank leaves with the verdict's status.
    failed = bool(hvd.broadcast_object(failed, root_rank=0))
    if failed:
        sys.exit(1)


def main(argv=None):
    config = parse_command(CheckConfig, "python -m hvd_cifar.check",
                           "Check that this host, or every host of the job, is ready to train "
                           "(start it like training).", argv)
    run_command(lambda: check(config))


if __name__ == "__main__":
    main()

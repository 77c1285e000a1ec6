"""Throughput benchmark of the training step, alone or under horovodrun.

    python -m hvd_cifar.bench --json                     (one worker)
    horovodrun -np 2 python -m hvd_cifar.bench --json    (all ranks; rank 0 prints)
    python -m hvd_cifar.bench --framework keras --json   (the same model with plain model.fit)
    python -m hvd_cifar.bench --model_scaling --compute_images_per_sec 242524
    python -m hvd_cifar.bench --input_only --batch_size 1024   (the input paths alone)

The Horovod benchmark times, in one run and on every rank at once: a large float32 matmul (the
machine's ceiling), each input path alone (per image, the reference; batched on the host; the
device path's batch function, here on the CPU, and the host CPU it costs a step), the
all-reduce of one step's gradients, and the training step of train.py on synthetic batches and
on the host input path. Without --data_dir the inputs read CIFAR-format records generated
into a temporary folder: the reader, the in-memory shard, the order and the distortions are the
ones training uses.
`make bench` (tools/bench_suite.py) runs it beside its peers and writes bench/results.*.
"""
if __name__ == "__main__":  # a command: TensorFlow's C++ lines begin at its import
    from hvd_cifar.native_logs import quiet_native_logs
    quiet_native_logs()

import dataclasses
import json
import math
import os
import statistics
import tempfile
import time

import tensorflow as tf

from hvd_cifar import model as model_lib
from hvd_cifar.data import download, pipeline, records
from hvd_cifar.command import (AllreduceFlags, DeviceFlags, UserError, batch_size_int,
                               cpu_threads_per_rank, flag, parse_command, positive_float,
                               positive_int, run_command, say)

MATMUL_SIZE = 2048         # 17 GFLOP a product: long enough to time, small enough for 2 cores
MATMUL_REPEATS = 10
GENERATED_RECORDS = 2_000  # records of random bytes in each training file without --data_dir
RING_HOP_LATENCY_SECONDS = 20e-6  # per ring step; an assumption typical of TCP on a data centre LAN


@dataclasses.dataclass
class BenchConfig(DeviceFlags, AllreduceFlags):
    batch_size: int = flag(128, "examples a rank processes in one step", batch_size_int)
    steps: int = flag(40, "timed training steps (after the warm-up)", positive_int)
    warmup_steps: int = flag(5, "untimed steps first (graph tracing, thread pools)",
                             positive_int)
    framework: str = flag("horovod", "horovod: train.py's step under Horovod; keras: the same "
                          "model with plain model.fit; multiworker: tf.distribute "
                          "MultiWorkerMirroredStrategy (one process per worker, TF_CONFIG set)",
                          choices=("horovod", "keras", "multiworker"))
    data_dir: str = flag(None, "CIFAR-10 folder for the real-input measurement (default: "
                         "generated records in a temporary folder)", str)
    json: bool = flag(False, "print one JSON object instead of a table")
    input_only: bool = flag(False, "time the input paths alone (per image, batched on the "
                            "host, the device path's batches and its host CPU a step), in one "
                            "process")
    model_scaling: bool = flag(False, "print the scaling model for GPU clusters (all-reduce "
                               "volume, step time, efficiency at 4/16/64 GPUs) instead")
    compute_images_per_sec: float = flag(None, "per-GPU training rate for --model_scaling "
                                         "(default: measured by this run, one worker)",
                                         positive_float)


# ---------------------------------------------------------------------------------------------
# Quantities of the network and the machine

def training_flops_per_image(model):
    """Multiply-adds x 2 of the convolutions and dense layers, x 3 for training: the forward
    product, and in the backward pass one product for the weights' gradient and one for the
    inputs' (LRN, pooling, ReLU and biases are memory-bound and not counted)."""
    forward = 0
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.Conv2D):
            _, height, width, channels = layer.output.shape
            kernel_height, kernel_width, in_channels, _ = layer.kernel.shape
            forward += 2 * height * width * channels * kernel_height * kernel_width * in_channels
        elif isinstance(layer, tf.keras.layers.Dense):
            inputs, outputs = layer.kernel.shape
            forward += 2 * inputs * outputs
    return 3 * forward


def matmul_gflops(size=MATMUL_SIZE, repeats=MATMUL_REPEATS):
    """GFLOP/s of a size x size float32 matmul with this process's threads."""
    a = tf.random.stateless_normal([size, size], [1, 2])
    b = tf.random.stateless_normal([size, size], [3, 4])
    tf.linalg.matmul(a, b).numpy()  # warm-up: oneDNN picks its kernel
    start = time.perf_counter()
    for _ in range(repeats):
        product = tf.linalg.matmul(a, b)
    product.numpy()
    return 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e9


def images_per_sec_of(batches, count, batch_size):
    """(images/s, milliseconds of this process's CPU time a batch) at which an iterator of
    batches delivers count batches (after two untimed ones)."""
    for _ in range(2):
        next(batches)
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        images, _ = next(batches)
    images.numpy()
    return (count * batch_size / (time.perf_counter() - start),
            1000 * (time.process_time() - start_cpu) / count)


def host_cpu_us_per_step_of_device_path(steps, count):
    """Microseconds of host CPU the device path's input costs a step: making its step number
    (the batch itself is built inside the step, on the device)."""
    start_cpu = time.process_time()
    for _ in range(count):
        next(steps)
    return 1e6 * (time.process_time() - start_cpu) / count


def step_statistics(step_seconds, images_per_step, ranks):
    """The timing fields shared by every framework, from one list of step durations."""
    milliseconds = sorted(1000 * s for s in step_seconds)
    images_per_sec = images_per_step * len(step_seconds) / sum(step_seconds)
    return {"ranks": ranks,
            "images_per_sec": round(images_per_sec, 1),
            "images_per_sec_per_rank": round(images_per_sec / ranks, 1),
            "step_time_ms_median": round(statistics.median(milliseconds), 2),
            "step_time_ms_p90": round(milliseconds[math.ceil(0.9 * len(milliseconds)) - 1], 2)}


def per_image_dataset(paths, num_records, batch_size, num_shards, shard_index, seed):
    """The tutorial's way, the reference the batched paths are measured against: a tf.data map
    that picks, crops and distorts one image at a time with tf.image's stateless ops, then
    batches the images."""
    records_per_shard, steps_per_epoch = pipeline.shard_sizes(num_records, batch_size,
                                                              num_shards)
    examples_per_epoch = steps_per_epoch * batch_size
    images, shard_labels = pipeline.shard_records(paths, num_records, num_shards, shard_index
                                                  ).batch(records_per_shard).get_single_element()
    with tf.device("/cpu:0"):
        shard_images = tf.Variable(images, trainable=False)
    crop_size = [pipeline.IMAGE_SIZE, pipeline.IMAGE_SIZE, records.DEPTH]

    def example(position):
        epoch, index_in_epoch = position // examples_per_epoch, position % examples_per_epoch
        order_seed = tf.stack([tf.constant(seed, tf.int64), epoch * num_shards + shard_index])
        record = tf.random.experimental.index_shuffle(index_in_epoch, order_seed,
                                                      tf.constant(records_per_shard - 1, tf.int64))
        crop, flip, brightness, contrast = tf.unstack(tf.random.experimental.stateless_split(
            tf.stack([tf.constant(seed, tf.int64), position * num_shards + shard_index]), num=4))
        image = tf.cast(tf.gather(shard_images, record), tf.float32)
        image = tf.image.stateless_random_crop(image, crop_size, crop)
        image = tf.image.stateless_random_flip_left_right(image, flip)
        image = tf.image.stateless_random_brightness(image, pipeline.MAX_BRIGHTNESS_DELTA,
                                                     brightness)
        image = tf.image.stateless_random_contrast(image, pipeline.CONTRAST_LOWER,
                                                   pipeline.CONTRAST_UPPER, contrast)
        return tf.image.per_image_standardization(image), tf.gather(shard_labels, record)

    return (tf.data.Dataset.range(0, pipeline.ENDLESS)
            .map(example, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE))


def input_paths(config, batches_dir, num_shards, shard_index):
    """Iterators of this rank's batches by each input path: per-image (the reference), batched
    on the host, and the device path's batch function called step by step."""
    paths, num_records = records.split_files(batches_dir, "train")
    shard = pipeline.Shard(paths, num_records, config.batch_size, num_shards, shard_index,
                           seed=shard_index, device=None)
    return {"per_image": iter(per_image_dataset(paths, num_records, config.batch_size,
                                                num_shards, shard_index, seed=shard_index)),
            "host": iter(shard.host_dataset()),
            "device": shard.device_batches()}


def input_measurements(config, batches_dir, size=1, rank=0, total=lambda value, name: value):
    """({field: value} of every input path's rate and CPU, {path: its batches, to go on}):
    2 x --steps batches of each; total(value, name) adds up the ranks' rates."""
    inputs, batches_by_path = {}, input_paths(config, batches_dir, size, rank)
    for path, batches in batches_by_path.items():
        rate, cpu_ms = images_per_sec_of(batches, 2 * config.steps, config.batch_size)
        inputs[f"input_{path}_images_per_sec"] = round(total(rate, f"input_{path}"), 1)
        inputs[f"input_{path}_cpu_ms_per_batch"] = round(cpu_ms, 3)
    inputs["input_device_host_cpu_us_per_step"] = round(host_cpu_us_per_step_of_device_path(
        pipeline.DeviceSteps(None), 1000), 2)
    return inputs, batches_by_path


def input_batches_dir(config, scratch_dir, seed):
    """--data_dir's batches, or random records generated into scratch_dir."""
    if config.data_dir:
        return download.ensure_batches_dir(config.data_dir, fetch=False)
    return records.write_random_batches_dir(scratch_dir, GENERATED_RECORDS, seed=seed)


def bench_inputs(config, scratch_dir):
    """The input paths alone, in one process (no Horovod, no training step)."""
    batches_dir = input_batches_dir(config, scratch_dir, seed=0)
    inputs, _ = input_measurements(config, batches_dir)
    return {"framework": "hvd_cifar inputs", "batch_size": config.batch_size,
            "cores": len(os.sched_getaffinity(0)), **inputs,
            "input_source": batches_dir if config.data_dir else "generated records"}


# ---------------------------------------------------------------------------------------------
# hvd_cifar under Horovod

def timed_steps(config, replica, batches):
    """Seconds of each of config.steps training steps, after config.warmup_steps untimed."""
    from hvd_cifar.collectives import barrier
    for _ in range(config.warmup_steps):
        replica.step(batches)
    barrier("before_steps")
    durations = []
    for _ in range(config.steps):
        start = time.perf_counter()
        loss, _ = replica.step(batches)
        float(loss)
        durations.append(time.perf_counter() - start)
    return durations


def gradient_allreduce_ms(config, replica, size):
    """Horovod: the step's all-reduce timed alone, one step's gradients fused as in training;
    0 for a one-rank job, whose all-reduce Horovod skips."""
    import horovod.tensorflow as hvd
    from hvd_cifar.collectives import barrier
    if size == 1:
        return 0.0
    gradients = [tf.ones_like(v) for v in replica.model.trainable_variables]
    compression = hvd.Compression.fp16 if config.fp16_allreduce else hvd.Compression.none
    for repeat in range(config.warmup_steps + config.steps):
        if repeat == config.warmup_steps:
            barrier("before_allreduce")
            start = time.perf_counter()
        reduced = hvd.grouped_allreduce(gradients, compression=compression,
                                        name="bench_gradients")
    reduced[0].numpy()
    return 1000 * (time.perf_counter() - start) / config.steps


def bench_horovod(config, scratch_dir):
    import horovod.tensorflow as hvd
    from hvd_cifar.collectives import barrier
    from hvd_cifar.rank_setup import (controller_name, pin_devices, set_launch_defaults,
                                      start_horovod)
    from hvd_cifar.replica import Replica, StepConfig, choose_optimizer

    # Horovod: the same start as train.py: init, then pin a GPU or a share of the cores.
    set_launch_defaults()
    start_horovod()
    rank, size = hvd.rank(), hvd.size()
    device = pin_devices(hvd.local_rank(), hvd.local_size(), config.threads_per_rank)
    tf.keras.utils.set_random_seed(rank)

    def total(value, name):
        # Horovod: rates measured on every rank at once add up to the job's.
        return float(hvd.allreduce(tf.constant(value, tf.float64), op=hvd.Sum, name=name))

    barrier("before_matmul")
    ceiling_gflops = total(matmul_gflops(), "ceiling_gflops")

    batches_dir = input_batches_dir(config, scratch_dir, seed=rank)
    barrier("before_input")
    # Horovod: every rank measures its own shard at once, as in training.
    inputs, batches_by_path = input_measurements(config, batches_dir, size, rank, total)

    # The optimizer training would choose for these ranks; a constant rate (no decay to end).
    step_config = StepConfig(batch_size=config.batch_size, lr_scaling="none",
                             xla=config.xla, fp16_allreduce=config.fp16_allreduce)
    replica = Replica(choose_optimizer(step_config, size), size, steps_per_epoch=1)
    hvd.broadcast_variables(replica.state_variables(), root_rank=0)

    global_batch = config.batch_size * size
    synthetic = step_statistics(timed_steps(
        config, replica, iter(pipeline.synthetic_dataset(config.batch_size, rank))),
        global_batch, size)
    real = step_statistics(timed_steps(config, replica, batches_by_path["host"]),
                           global_batch, size)
    allreduce_ms = gradient_allreduce_ms(config, replica, size)
    flops_per_image = training_flops_per_image(replica.model)
    gflops = flops_per_image * synthetic["images_per_sec"] / 1e9
    result = {
        "framework": "hvd_cifar",
        "controller": controller_name(),
        **synthetic,
        "batch_size": config.batch_size,
        "devices": hvd.allgather_object(device),
        "real_input_images_per_sec": real["images_per_sec"],
        "real_input_step_time_ms_median": real["step_time_ms_median"],
        # the path training takes on a CPU: batched on the host
        "input_images_per_sec": inputs["input_host_images_per_sec"],
        **inputs,
        "input_source": batches_dir if config.data_dir else "generated records",
        "allreduce_ms": round(allreduce_ms, 2),
        "allreduce_fraction": round(min(1.0, allreduce_ms / synthetic["step_time_ms_median"]),
                                    4),
        "flops_per_image": flops_per_image,
        "gflops": round(gflops, 2),
        "ceiling_gflops": round(ceiling_gflops, 2),
        "ceiling_fraction": round(gflops / ceiling_gflops, 4),
    }
    return result if rank == 0 else None


# ---------------------------------------------------------------------------------------------
# Peers: plain Keras, and tf.distribute's MultiWorkerMirroredStrategy

class StepTimer(tf.keras.callbacks.Callback):
    """Durations of model.fit's batches after the first `skip`, end to end: from one batch's
    end to the next, so fit's own loop, input and callbacks are counted as in our step."""

    def __init__(self, skip):
        super().__init__()
        self.skip, self.durations, self.last_end = skip, [], None

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if batch >= self.skip:
            self.durations.append(now - self.last_end)
        self.last_end = now


def compiled_model():
    model = model_lib.inference()
    # The weight-decay terms are in model.losses, which fit() adds to the loss.
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def bench_keras(config):
    """The same network with plain model.fit in one process, no Horovod."""
    model = compiled_model()
    timer = StepTimer(config.warmup_steps)
    model.fit(pipeline.synthetic_dataset(config.batch_size), epochs=1,
              steps_per_epoch=config.warmup_steps + config.steps, callbacks=[timer], verbose=0)
    return {"framework": "keras model.fit", "batch_size": config.batch_size,
            **step_statistics(timer.durations, config.batch_size, 1)}


def bench_multiworker(config):
    """MultiWorkerMirroredStrategy over the workers of TF_CONFIG (one process each)."""
    if not os.environ.get("TF_CONFIG"):
        raise UserError("--framework multiworker needs TF_CONFIG (see tools/bench_suite.py)")
    cluster = json.loads(os.environ["TF_CONFIG"])
    workers = len(cluster["cluster"]["worker"])
    # The workers share the host's cores like Horovod's ranks do.
    from hvd_cifar.rank_setup import use_cpu_threads
    use_cpu_threads(cpu_threads_per_rank(config.threads_per_rank, len(os.sched_getaffinity(0)),
                                         workers))
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = compiled_model()
    batches = strategy.distribute_datasets_from_function(
        lambda context: pipeline.synthetic_dataset(config.batch_size, context.input_pipeline_id))
    timer = StepTimer(config.warmup_steps)
    model.fit(batches, epochs=1, steps_per_epoch=config.warmup_steps + config.steps,
              callbacks=[timer], verbose=0)
    if cluster["task"]["index"] != 0:
        return None
    return {"framework": "tf.distribute MultiWorkerMirroredStrategy",
            "batch_size": config.batch_size,
            **step_statistics(timer.durations, config.batch_size * workers, workers)}


# ---------------------------------------------------------------------------------------------
# The scaling model on paper

def scaling_model(parameters, images_per_sec_per_gpu, gpus=(4, 16, 64),
                  bandwidths_gbit=(25, 100), batch_sizes=(128, 512, 2048)):
    """Rows of the data-parallel efficiency of a ring all-reduce, with no overlap of compute and
    communication (the pessimistic case: Horovod overlaps what the backward pass allows).

    A ring moves 2(N-1)/N x the gradient bytes through every GPU's link in 2(N-1) hops."""
    rows = []
    for bandwidth in bandwidths_gbit:
        for bytes_per_value, precision in ((4, "fp32"), (2, "fp16")):
            for batch_size in batch_sizes:
                compute = batch_size / images_per_sec_per_gpu
                for n in gpus:
                    volume = parameters * bytes_per_value * 2 * (n - 1) / n
                    communicate = (volume * 8 / (bandwidth * 1e9) +
                                   2 * (n - 1) * RING_HOP_LATENCY_SECONDS)
                    rows.append({"gbit_per_sec": bandwidth, "allreduce": precision,
                                 "batch_per_gpu": batch_size, "gpus": n,
                                 "allreduce_mb": round(volume / 1e6, 2),
                                 "compute_ms": round(1000 * compute, 3),
                                 "allreduce_ms": round(1000 * communicate, 3),
                                 "efficiency": round(compute / (compute + communicate), 3)})
    return rows


def scaling_table(rows, images_per_sec_per_gpu):
    lines = [f"Scaling model: {model_lib.NUM_PARAMETERS:,} parameters, "
             f"{images_per_sec_per_gpu:,.0f} images/s per GPU, ring all-reduce without overlap "
             f"({RING_HOP_LATENCY_SECONDS * 1e6:g} us a hop)", "",
             "| network | all-reduce | batch/GPU | step compute ms | efficiency at "
             + " / ".join(f"{n} GPUs" for n in sorted({r['gpus'] for r in rows})) + " |",
             "|---|---|---|---|---|"]
    keys = sorted({(r["gbit_per_sec"], r["allreduce"], r["batch_per_gpu"]) for r in rows},
                  key=lambda k: (k[0], k[1] != "fp32", k[2]))
    for bandwidth, precision, batch_size in keys:
        group = [r for r in rows if (r["gbit_per_sec"], r["allreduce"], r["batch_per_gpu"]) ==
                 (bandwidth, precision, batch_size)]
        lines.append(f"| {bandwidth} Gbit/s | {precision} | {batch_size} | "
                     f"{group[0]['compute_ms']:.3f} | "
                     + " / ".join(f"{r['efficiency']:.0%}" for r in group) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------

def report(result):
    width = max(map(len, result))
    return "\n".join(f"{name:<{width}}  {value}" for name, value in result.items())


def run(config):
    if config.model_scaling:
        rate = config.compute_images_per_sec
        if rate is None:
            with tempfile.TemporaryDirectory(prefix="hvd_cifar-bench-") as scratch_dir:
                measured = bench_horovod(config, scratch_dir)
            if measured is None:  # not rank 0
                return
            rate = measured["images_per_sec_per_rank"]
        rows = scaling_model(model_lib.NUM_PARAMETERS, rate)
        say(json.dumps(rows) if config.json else scaling_table(rows, rate))
        return
    if config.input_only:
        with tempfile.TemporaryDirectory(prefix="hvd_cifar-bench-") as scratch_dir:
            result = bench_inputs(config, scratch_dir)
    elif config.framework == "keras":
        result = bench_keras(config)
    elif config.framework == "multiworker":
        result = bench_multiworker(config)
    else:
        with tempfile.TemporaryDirectory(prefix="hvd_cifar-bench-") as scratch_dir:
            result = bench_horovod(config, scratch_dir)
    if result is not None:
        say(json.dumps(result) if config.json else report(result))


def main(argv=None):
    config = parse_command(BenchConfig, "python -m hvd_cifar.bench",
                           "Time the training step (images/s, step times, input pipeline, "
                           "all-reduce share, FLOP/s against a matmul ceiling), alone or under "
                           "horovodrun; rank 0 prints.", argv)
    run_command(lambda: run(config))


if __name__ == "__main__":
    main()

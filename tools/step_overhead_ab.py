"""The per-step costs around the network's compute, interleaved in one process (1 thread).

    .venv/bin/python tools/step_overhead_ab.py [ROUNDS]

Times, at batch 128 on synthetic data: the replica's step (one compiled call a pass), the
earlier three calls a step (rate, pass, step count and averages), the step without the moving
averages, Keras's own compiled train step, and the replica's step with --xla on. Each round runs
10 steps of every variant in turn (the first 2 untimed); the median and minimum step in ms are
printed per variant. Used for docs/results/benchmark.md.
"""
import statistics
import sys
import time

import horovod.tensorflow as hvd
import tensorflow as tf

from hvd_cifar import model as model_lib
from hvd_cifar.data import pipeline
from hvd_cifar.replica import Replica, StepConfig, choose_optimizer

BATCH = 128
hvd.init()  # a one-rank job: the all-reduce is skipped, as at np=1
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
replica = Replica(choose_optimizer(StepConfig(batch_size=BATCH, lr_scaling="none"), 1), 1,
                  steps_per_epoch=1)
xla_replica = Replica(choose_optimizer(StepConfig(batch_size=BATCH, lr_scaling="none", xla="on"),
                                      1), 1, steps_per_epoch=1)
batches = iter(pipeline.synthetic_dataset(BATCH, 0))


def backward_pass(images, labels):
    with tf.GradientTape() as tape:
        loss, _ = replica.loss_and_logits(images, labels)
    replica.optimizer.minimize(loss, replica.model.trainable_variables, tape=tape)
    return loss


set_rate = tf.function(lambda: replica.optimizer.learning_rate.assign(
    replica.schedule(replica.global_step)))
separate_pass = tf.function(backward_pass)


@tf.function
def finish_step():
    replica.global_step.assign_add(1)
    replica.moving_averages.apply(replica.model.trainable_variables)


@tf.function
def step_without_averages(images, labels):
    replica.optimizer.learning_rate.assign(replica.schedule(replica.global_step))
    loss = backward_pass(images, labels)
    replica.global_step.assign_add(1)
    return loss


keras_model = model_lib.inference()
keras_model.compile(optimizer=tf.keras.optimizers.SGD(0.1),
                    loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
keras_batches = iter(pipeline.synthetic_dataset(BATCH, 0))
keras_step = keras_model.make_train_function()


def three_calls():
    set_rate()
    loss = separate_pass(*next(batches))
    finish_step()
    return loss


VARIANTS = {
    "one call a pass (replica)": lambda: replica.step(batches)[0],
    "three calls a step": three_calls,
    "no moving averages": lambda: step_without_averages(*next(batches)),
    "keras train step": lambda: keras_step(keras_batches)["loss"],
    "--xla on": lambda: xla_replica.step(batches)[0],
}

seconds = {name: [] for name in VARIANTS}
for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 5):
    for name, step in VARIANTS.items():
        for index in range(10):
            start = time.perf_counter()
            float(step())
            if index >= 2:
                seconds[name].append(time.perf_counter() - start)
for name, values in seconds.items():
    print(f"{name}: median {1000 * statistics.median(values):.1f} ms, "
          f"min {1000 * min(values):.1f} ms")

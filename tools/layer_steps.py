"""How far one update moves each layer: SGD's step against LARS's, at a checkpoint's weights.

    python tools/layer_steps.py CHECKPOINT --data_dir D --sgd_lr 0.3 --lars_lr 1.86 \
        [--trust_coefficient 0.001] [--lars_output_layer trust|global] [--batch_size 1024]

CHECKPOINT is a checkpoint path of a training run (train_dir/ckpt-N). On one batch of distorted
training images (the batch of step N of a one-rank shard), prints for each variable its norm
|w|, the norm |g| of the training loss's gradient (weight decay included), the step relative to
the weights that SGD takes, lr x |g| / |w|, and the one LARS gives every weight matrix,
lr x trust coefficient (biases keep the global rate, and so does the output layer's matrix
under --lars_output_layer global). These are one update's steps before
momentum: momentum m lengthens a step by up to 1 / (1 - m) while the gradients agree (10 times
at 0.9), so compare runs of different momentum with that factor.
"""
import argparse

import tensorflow as tf

from hvd_cifar import checkpoint as checkpoint_lib, model as model_lib, replica
from hvd_cifar.data import download, pipeline, records


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data_dir", required=True, help="folder holding cifar-10-batches-bin/")
    parser.add_argument("--sgd_lr", type=float, required=True)
    parser.add_argument("--lars_lr", type=float, required=True)
    parser.add_argument("--trust_coefficient", type=float, default=0.001)
    parser.add_argument("--lars_output_layer", choices=["trust", "global"], default="trust")
    parser.add_argument("--batch_size", type=int, default=1024)
    args = parser.parse_args()
    model = model_lib.inference()
    # The raw weights, not the moving averages (what the next update moves); the averages are
    # read only because the checkpoint's layout names them.
    averages = [tf.Variable(tf.zeros_like(v)) for v in model.trainable_variables]
    step = tf.Variable(0, dtype=tf.int64)
    checkpoint_lib.layout(model, averages, step).read(args.checkpoint).expect_partial()
    batches_dir = download.ensure_batches_dir(args.data_dir, fetch=False)
    paths, num_records = records.split_files(batches_dir, "train")
    shard = pipeline.Shard(paths, num_records, args.batch_size)
    images, labels = next(iter(shard.host_dataset(int(step))))
    with tf.GradientTape() as tape:
        loss = model_lib.loss(model, model(images, training=True), labels)
    gradients = tape.gradient(loss, model.trainable_variables)
    lars_step = args.lars_lr * args.trust_coefficient
    # The trainer's LARS, only asked which weights it steps at the global rate.
    lars_optimizer = replica.LARS(args.trust_coefficient, (model_lib.OUTPUT_LAYER,) if (
        args.lars_output_layer == "global") else ())
    print(f"step {int(step)}, loss {float(loss):.3f} on {args.batch_size} training images\n")
    print("| variable | \\|w\\| | \\|g\\| | SGD lr x \\|g\\| / \\|w\\| | LARS lr x trust |")
    print("|---|---|---|---|---|")
    for variable, gradient in zip(model.trainable_variables, gradients):
        weight_norm, gradient_norm = float(tf.norm(variable)), float(tf.norm(gradient))
        lars = ("(global rate)" if lars_optimizer.steps_at_global_rate(variable)
                else f"{lars_step:.4f}")
        print(f"| {variable.name.split(':')[0]} | {weight_norm:.3f} | {gradient_norm:.4f} | "
              f"{args.sgd_lr * gradient_norm / weight_norm:.4f} | {lars} |")


if __name__ == "__main__":
    main()

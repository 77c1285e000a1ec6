"""Run one synchronized training step of the real Replica on fixed examples; save the weights.

    python tests/one_step.py OUT.npz --batch_size B --lr LR --examples N [--passes P]
                             [--optimizer sgd|lars] [--lars_output_layer trust|global]
                             (alone, or under horovodrun)

The examples are the same N on every run: rank r takes the r-th block of B x P of them and
feeds them as P backward passes of B (--backward_passes_per_step P). Rank 0 saves the
weights before and after the one synchronized step, and alone (one pass) the gradient of the
loss at the starting weights.
"""
import argparse

import numpy as np
import tensorflow as tf

import horovod.tensorflow as hvd
from hvd_cifar.replica import Replica, StepConfig, choose_optimizer

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--batch_size", type=int, required=True)
parser.add_argument("--lr", type=float, required=True)
parser.add_argument("--examples", type=int, required=True)
parser.add_argument("--passes", type=int, default=1)
parser.add_argument("--optimizer", default="sgd")
parser.add_argument("--trust_coefficient", type=float, default=0.001)
parser.add_argument("--lars_output_layer", default="trust")
args = parser.parse_args()

hvd.init()
tf.keras.utils.set_random_seed(1)
# Plain steps at a constant rate: no momentum (one step would take the same), no decay.
config = StepConfig(batch_size=args.batch_size, lr=args.lr, warmup_epochs=0.0, max_lr=0.0,
                    momentum=0.0, lr_decay="staircase",
                    backward_passes_per_step=args.passes, optimizer=args.optimizer,
                    trust_coefficient=args.trust_coefficient,
                    lars_output_layer=args.lars_output_layer)
replica = Replica(choose_optimizer(config, hvd.size()), hvd.size(), steps_per_epoch=100)
hvd.broadcast_variables(replica.state_variables(), root_rank=0)

rng = np.random.default_rng(7)
images = rng.normal(size=(args.examples, 24, 24, 3)).astype(np.float32)
labels = rng.integers(0, 10, args.examples).astype(np.int32)
per_rank = args.batch_size * args.passes
passes = [slice(hvd.rank() * per_rank + p * args.batch_size,
                hvd.rank() * per_rank + (p + 1) * args.batch_size) for p in range(args.passes)]
before = [v.numpy() for v in replica.model.trainable_variables]
gradients = []
if hvd.size() == 1 and args.passes == 1:
    with tf.GradientTape() as tape:
        loss, _ = replica.loss_and_logits(tf.constant(images[passes[0]]),
                                          tf.constant(labels[passes[0]]))
    gradients = [g.numpy() for g in tape.gradient(loss, replica.model.trainable_variables)]
replica.step(iter([(tf.constant(images[part]), tf.constant(labels[part])) for part in passes]))
if hvd.rank() == 0:
    after = [v.numpy() for v in replica.model.trainable_variables]
    np.savez(args.out, learning_rate=replica.schedule(0).numpy(),
             global_step=replica.global_step.numpy(),
             **{f"average_{i}": v.numpy() for i, v in enumerate(replica.averaged_variables)},
             **{f"before_{i}": v for i, v in enumerate(before)},
             **{f"gradient_{i}": g for i, g in enumerate(gradients)},
             **{f"name_{i}": v.name for i, v in enumerate(replica.model.trainable_variables)},
             **{f"after_{i}": v for i, v in enumerate(after)})

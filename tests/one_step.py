"""Run one synchronized training step of the real Trainer on fixed examples; save the weights.

    python tests/one_step.py OUT.npz --batch_size B --lr LR     (alone, or under horovodrun)

The examples are the same 2B on every run; at size 2 rank r takes the r-th half of them, at
size 1 the one process takes all 2B. Rank 0 saves the weights before and after the step.
"""
import argparse

import numpy as np
import tensorflow as tf

import horovod.tensorflow as hvd
from hvd_cifar.train import Trainer, TrainConfig

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--batch_size", type=int, required=True)
parser.add_argument("--lr", type=float, required=True)
parser.add_argument("--examples", type=int, required=True)
args = parser.parse_args()

hvd.init()
tf.keras.utils.set_random_seed(1)
config = TrainConfig(batch_size=args.batch_size, lr=args.lr, warmup_epochs=0.0, max_lr=0.0)
trainer = Trainer(config, hvd.size(), steps_per_epoch=100)
hvd.broadcast_variables(trainer.state_variables(), root_rank=0)

rng = np.random.default_rng(7)
images = rng.normal(size=(args.examples, 24, 24, 3)).astype(np.float32)
labels = rng.integers(0, 10, args.examples).astype(np.int32)
mine = slice(hvd.rank() * args.batch_size, (hvd.rank() + 1) * args.batch_size)
before = [v.numpy() for v in trainer.model.trainable_variables]
trainer.step(iter([(tf.constant(images[mine]), tf.constant(labels[mine]))]))
if hvd.rank() == 0:
    after = [v.numpy() for v in trainer.model.trainable_variables]
    np.savez(args.out, learning_rate=trainer.schedule(0).numpy(),
             **{f"before_{i}": v for i, v in enumerate(before)},
             **{f"after_{i}": v for i, v in enumerate(after)})

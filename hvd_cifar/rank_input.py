"""Each rank's input: the data made ready on every host, the steps in an epoch of the global
batch, and the rank's own shard of batches from a given step on (a batch is a pure function of
the step, so a resumed or resized run reads on where it was)."""
import time

from hvd_cifar.command import UserError
from hvd_cifar.data import download, pipeline, records
from hvd_cifar.collectives import fail_together

# Synthetic runs count epochs as CIFAR-10's training set, so their schedule matches a real run.
SYNTHETIC_EXAMPLES_PER_EPOCH = 50_000


def ready_data_and_count_steps(config, size, local_rank):
    """Make the data ready on every host; (the training files as (paths, records), or None for
    synthetic data, and the steps in one epoch of the global batch for size ranks). The files
    are checked here, once: reading their labels reads them whole."""
    passes = config.backward_passes_per_step
    if config.synthetic:
        return None, max(1, SYNTHETIC_EXAMPLES_PER_EPOCH // (config.batch_size * size * passes))

    def fetch():
        # Horovod: one process per host downloads or extracts; the others wait for it.
        if local_rank == 0:
            download.ensure_batches_dir(config.data_dir, config.data_url, config.data_sha256,
                                        fetch=not config.no_download)

    fail_together(fetch)  # Horovod: a host that cannot get the data stops every rank

    def count():
        batches_dir = download.ensure_batches_dir(config.data_dir, fetch=False)
        paths, num_records = records.split_files(batches_dir, "train")
        # Horovod: every shard yields the same number of batches.
        steps = pipeline.shard_sizes(num_records, config.batch_size, size)[1] // passes
        return (paths, num_records), steps

    # Horovod: a rank whose files are damaged or unreadable stops every rank.
    train_files, steps_per_epoch = fail_together(count)
    if steps_per_epoch == 0:
        raise UserError(f"--backward_passes_per_step {passes} is more than the batches in one "
                        "epoch of a rank's shard")
    return train_files, steps_per_epoch


def augmentation_place(config):
    """'device' or 'host': where the distortions run; None for synthetic data."""
    return None if config.synthetic else pipeline.augmentation_place(config.augment_on)


def rank_batches(config, train_files, size, rank, start_step):
    """This rank's batches of train_files (None: synthetic) from start_step on: (images,
    labels) built on the host, or step numbers whose batches the device builds."""
    if train_files is None:
        return iter(pipeline.synthetic_dataset(config.batch_size, config.seed + rank))
    paths, num_records = train_files
    on_device = augmentation_place(config) == "device"
    # Horovod: rank r keeps shard r of size; rank 0's step decides every rank's position.
    shard = pipeline.Shard(paths, num_records, config.batch_size, num_shards=size,
                           shard_index=rank, seed=config.seed,
                           device=None if on_device else "/cpu:0")
    first_batch = start_step * config.backward_passes_per_step
    if on_device:
        return pipeline.DeviceSteps(shard, first_batch)
    return iter(shard.host_dataset(first_batch))


class TimedBatches:
    """A rank's batches as the loop draws them: how long it waited for them (the log's input
    wait) and the last one drawn (the batch the activation histograms show, since drawing
    another would move the rank's position in its data)."""

    def __init__(self, batches):
        self.batches = batches
        self.shard = getattr(batches, "shard", None)  # the device path's shard, if any
        self.waited_seconds = 0.0
        self.last = None

    def __iter__(self):
        return self

    def __next__(self):
        waiting_since = time.perf_counter()
        self.last = next(self.batches)
        self.waited_seconds += time.perf_counter() - waiting_since
        return self.last

    def take_wait(self):
        """Seconds spent waiting for batches since the last call."""
        waited, self.waited_seconds = self.waited_seconds, 0.0
        return waited

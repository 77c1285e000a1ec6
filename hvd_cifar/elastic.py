"""The state an elastic Horovod job keeps in memory and restores after a membership change."""

import horovod.tensorflow as hvd
from horovod.common.elastic import ObjectState


class ElasticState(ObjectState):
    """Horovod: the state of an elastic job, the trainer's variables (model, optimizer, moving
    averages, step) copied to host memory at every commit, plus whether rank 0 has set the run
    up. A worker that fails rolls everyone back to the last commit; one that joins receives the
    state from rank 0.

    horovod.tensorflow.elastic.TensorFlowState does not re-broadcast its variables in eager
    mode (0.28.1 syncs only through a session), so a joining worker would keep its own."""

    def __init__(self, variables):
        self.variables = variables
        self.copy_to_host()
        super().__init__(bcast_object=hvd.broadcast_object, get_rank=hvd.rank, set_up=False)

    def copy_to_host(self):
        self.committed = [variable.numpy() for variable in self.variables]

    def save(self):
        self.copy_to_host()
        super().save()

    def restore(self):
        for variable, value in zip(self.variables, self.committed):
            variable.assign(value)
        super().restore()

    def sync(self):
        hvd.broadcast_variables(self.variables, root_rank=0)
        self.copy_to_host()
        super().sync()

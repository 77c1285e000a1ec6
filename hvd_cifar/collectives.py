"""The collectives every command of ours shares: a barrier, failing together (every rank meets
an error at the same point, and rank 0 says it), and telling a lost peer from other failures."""
import re

import tensorflow as tf
import horovod.tensorflow as hvd

from hvd_cifar.command import UserError


def barrier(name):
    """Horovod: return when every rank has reached this point (an all-reduce of nothing)."""
    hvd.allreduce(tf.constant(0.0), name=name).numpy()


def fail_together(action):
    """Run action on this rank; when it raises a UserError on any rank, raise it on every rank.

    Horovod: without this a rank that fails alone leaves the others waiting in a collective.
    It costs one small all-gather."""
    try:
        result, error = action(), None
    except UserError as failure:
        result, error = None, str(failure)
    errors = [e for e in hvd.allgather_object(error) if e]
    if errors:
        raise UserError(errors[0])
    return result


# What a collective raises in a rank whose peers are gone, as Horovod 0.28 words it (strings of
# its library): Horovod shut down after another rank failed or finished, or Gloo's TCP transport
# found a connection closed, reset or silent (its messages carry the transport's source file).
LOST_PEER_MESSAGE = re.compile(
    r"Horovod has been shut down"
    r"|gloo/transport/tcp/\w+\.cc:\d+\] (Connection closed by peer|Socket closed|Read error"
    r"|Timed out waiting)[^\n]*")


def lost_peer_reason(error):
    """Horovod's or Gloo's reason in a collective's error when the other ranks are gone, in a
    few words; None when error is something else (a tf.data connection reset included)."""
    found = LOST_PEER_MESSAGE.search(str(error))
    if found is None:
        return None
    # Gloo's source file is not the user's business, nor TensorFlow's node name in [[...]].
    reason = re.sub(r"^.*\.cc:\d+\] ", "", found.group(0))
    return re.sub(r"\s*\[\[.*", "", reason).strip()[:200]

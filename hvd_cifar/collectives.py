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


# What a collective raises in a rank whose peers stopped answering or died (Gloo's timeout, a
# closed connection, Horovod shutting down after another rank failed).
LOST_PEER_MARKERS = ("Horovod", "Gloo", "gloo", "Connection", "connection")


def lost_peer_reason(error):
    """Horovod's or Gloo's reason in a collective's error when the other ranks are gone, in a
    few words; None when error is something else."""
    text = str(error)
    if not any(marker in text for marker in LOST_PEER_MARKERS):
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # The reason is a line of Horovod's or Gloo's, not one of TensorFlow's node trace.
    reasons = [line for line in lines if any(m in line for m in LOST_PEER_MARKERS)
               and "node" not in line and not line.startswith("File ")]
    # TensorFlow appends the failing node's name in [[...]]: not the user's business.
    reason = (re.sub(r"\s*\[\[.*", "", reasons[-1]).split(". ")[0] if reasons
              else "a collective failed")
    return reason[:200]

"""One L4 step for all replicas of a `tf.distribute` strategy, or of Horovod.

L4's stepsize ``eta = alpha * (L - gamma * L_min) / (<v, g> + eps)`` depends on
the loss and on an inner product over all variables. Replicas that used their
own loss would take different steps and drift apart for good, so under a
strategy the front ends

- sum the replicas' losses once per step (`sum_over_replicas`: one scalar
  all-reduce). Each replica holds its share of the loss, scaled as its
  gradients are (Keras divides by the number of replicas;
  `tf.nn.compute_average_loss` by the global batch size), and the gradients
  are summed too, so the summed loss is the loss whose gradient the summed
  gradients are: the loss of the whole batch;
- then run the step once per device (`on_each_device`), on that device's copies
  of the variables and of L4's state, with the same loss and gradients:
  every copy takes the same step, or every copy skips it.

Horovod runs one process per replica outside `tf.distribute`; there the
optimizers' ``reduce_loss`` argument (e.g. ``hvd.allreduce``, which averages as
Horovod's optimizers average the gradients) makes the loss the same on every
rank.
"""

import threading

import tensorflow as tf


def global_loss(loss, reduce_loss=None):
    """The loss of the whole batch, the same on every replica.

    ``reduce_loss(loss)`` across processes (Horovod: ``hvd.allreduce``), then
    summed over the replicas of a `tf.distribute` strategy. `None` stays `None`
    (the front ends then say how to pass the loss).
    """
    if loss is None:
        return None
    loss = tf.convert_to_tensor(loss)
    if reduce_loss is not None:
        loss = reduce_loss(loss)
    return sum_over_replicas(loss)


def sum_over_replicas(values):
    """``values`` (a tensor or a list) summed over the replicas in sync, in one
    all-reduce; ``values`` themselves outside a strategy."""
    if not tf.distribute.has_strategy():
        return values
    # Nothing differentiates an optimizer's inputs. In v1 graphs the
    # all-reduce's gradient function would walk back into the other replicas'
    # graphs, and fail to find their variables by name.
    values = tf.nest.map_structure(tf.stop_gradient, values)
    return _replica_context().all_reduce(tf.distribute.ReduceOp.SUM, values)


def merge(fn, *args):
    """Calls ``fn(*args)`` once, for all replicas, in the cross-replica context.

    In a replica context this waits for every replica (``merge_call``); each
    tensor in ``args`` then stands for the values of all replicas. Outside a
    strategy it just calls ``fn(*args)``.
    """
    if not tf.distribute.has_strategy():
        return fn(*args)
    return _replica_context().merge_call(lambda _, *args: fn(*args), args=args)


def on_each_device(step, anchor, *args):
    """Runs ``step(*args)`` on each device of the current strategy.

    Called in the cross-replica context (see `merge`): ``step`` runs once per
    device inside ``strategy.extended.update`` on ``anchor`` (a variable of
    the strategy), where reading or assigning a distributed variable reads or
    assigns that device's copy, and each argument is that device's value.
    Outside a strategy it just calls ``step(*args)``. Returns what ``step``
    returned, grouped over the devices.
    """
    if not tf.distribute.has_strategy():
        return step(*args)

    # Not converted by AutoGraph: the step is graph code already.
    @tf.autograph.experimental.do_not_convert
    def update(_, *local_args):
        return step(*local_args)

    return tf.distribute.get_strategy().extended.update(
        anchor, update, args=args, group=True
    )


def _replica_context():
    context = tf.distribute.get_replica_context()
    if context is None:
        raise ValueError(
            "Under a tf.distribute strategy, L4 applies gradients in a replica "
            "context (inside `strategy.run`), as TensorFlow's optimizers do."
        )
    return context


class ReplicaLocal:
    """A value each replica hands to its own next step (not TensorFlow's
    ``PerReplica``, which holds every replica's value at once).

    Replicas of a strategy trace their step in threads of their own (one per
    device), so a value one replica remembers must not be read by another.
    Outside a strategy there is one thread, and one value.
    """

    def __init__(self):
        self._values = {}

    def put(self, value):
        self._values[threading.get_ident()] = value

    def get(self):
        """The value put by this replica; `None` if there is none."""
        return self._values.get(threading.get_ident())

    def take(self):
        """The value put by this replica, removed; `None` if there is none."""
        return self._values.pop(threading.get_ident(), None)

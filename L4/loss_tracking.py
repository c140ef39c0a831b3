"""Which loss belongs to the gradients that `apply_gradients` is given.

L4's stepsize ``eta = alpha * (L - gamma * L_min) / (<v, g> + eps)`` (Rolínek
& Martius, NeurIPS 2018, eq. 3) needs the loss ``L`` whose gradient ``g`` is.
The ``tf.compat.v1`` optimizers remember the loss of `compute_gradients`; that
is right as long as the gradients reach `apply_gradients` as they left. Legacy
TF1 training code combines them in between: it averages towers, sums clones,
divides by a manual loss scale, or aggregates workers' gradients in
``SyncReplicasOptimizer``. Each such linear combination must be applied to the
loss too. This module holds the two ways L4 gets there:

- `LossCarrier` (``carry_loss=True``): `compute_gradients` returns the loss as
  the "gradient" of a scalar variable of L4's own, so every wrapper that
  averages, sums, rescales or aggregates gradients per variable does the same
  to the loss, without knowing L4. `apply_gradients` takes it out again.
- `Remembered`: without the carrier, what `compute_gradients` returned, so
  that `apply_gradients` can say when the gradients it is given are not those
  of the remembered loss (several losses, a rescale, an aggregation) instead
  of taking a wrong loss silently.
"""

import dataclasses
import weakref

import tensorflow as tf

# Ops through which a gradient stays its own gradient times a factor.
_PASS_THROUGH = ("Identity", "Cast")
_MULTIPLY = ("Mul",)
_DIVIDE = ("RealDiv", "Div", "DivNoNan")
# How far back `apply_gradients` looks for the gradients it returned.
_MAX_DEPTH = 16
_MAX_ANCESTORS = 256

_HOW_TO_PASS = (
    "Pass the loss of the gradients you hand over: "
    "`apply_gradients(grads_and_vars, loss=loss)`, or construct the optimizer "
    "with `carry_loss=True`, so that the loss travels with the gradients and is "
    "combined as they are (see the README, 'Legacy training code')."
)


class LossCarrier:
    """A scalar variable per graph whose "gradient" in ``grads_and_vars`` is the loss.

    The variable is never read or written, and belongs to no collection, so
    initializers, `Saver` and checkpoints do not see it. Wrappers only look at
    its name, shape and device (``SyncReplicasOptimizer`` puts its
    accumulator next to it).
    """

    def __init__(self, name):
        self._name = name
        self._graphs = weakref.WeakKeyDictionary()
        self._eager = None

    def pair(self, loss):
        """``(loss, variable)`` for `compute_gradients` to return."""
        with tf.init_scope():
            if tf.executing_eagerly():
                if self._eager is None:
                    self._eager = self._make()
                return loss, self._eager
            graph = tf.compat.v1.get_default_graph()
            if graph not in self._graphs:
                self._graphs[graph] = self._make()
            return loss, self._graphs[graph]

    def _make(self):
        return tf.compat.v1.Variable(
            0.0, trainable=False, collections=[], name=self._name + "/loss_carrier"
        )

    def split(self, grads_and_vars):
        """``(loss, the other pairs)``; the loss is `None` if no pair carries one."""
        carriers = [self._eager, *self._graphs.values()]
        loss, pairs = None, []
        for grad, var in grads_and_vars:
            if any(var is carrier for carrier in carriers):
                if grad is None:
                    raise ValueError(
                        "The loss L4 carries in `grads_and_vars` was dropped "
                        "(its gradient is None)."
                    )
                loss = grad
            else:
                pairs.append((grad, var))
        return loss, pairs


@dataclasses.dataclass
class Remembered:
    """What `compute_gradients` returned since the last `apply_gradients`."""

    losses: list = dataclasses.field(default_factory=list)
    gradients: set = dataclasses.field(default_factory=set)
    handed_over: bool = False  # a loss-scale wrapper handed over the true loss

    def add(self, loss, grads, handed_over):
        if not any(loss is known for known in self.losses):
            self.losses.append(loss)
        if not tf.executing_eagerly():
            self.gradients.update(
                _values(g).ref() for g in grads if tf.is_tensor(_values(g))
            )
        self.handed_over = self.handed_over or handed_over

    def loss_for(self, grads):
        """The remembered loss (the last one), after checking that ``grads``
        are its gradients; raises or warns (once per graph) where they are not."""
        if not self.losses or tf.executing_eagerly() or tf.distribute.has_strategy():
            return self.losses[-1] if self.losses else None
        # Symbolic tensors only: what the graph can trace back.
        grads = [g for g in map(_values, grads) if tf.is_tensor(g) and hasattr(g, "op")]
        if any(g.op.type.endswith("AccumulatorTakeGradient") for g in grads):
            raise ValueError(
                "L4 is given gradients aggregated over workers (by "
                "`SyncReplicasOptimizer`'s accumulators), but the loss it "
                "remembers is this worker's own, of other batches. Construct "
                "the L4 optimizer with `carry_loss=True`: the loss is then "
                "aggregated with the gradients."
            )
        if len(self.losses) > 1:
            _warn_once(
                "several_losses",
                f"L4: `compute_gradients` was called with {len(self.losses)} "
                "different losses since the last `apply_gradients` (towers, "
                "clones?). L4 takes the last one, "
                f"{getattr(self.losses[-1], 'name', self.losses[-1])!r}, for the "
                "combined gradients. " + _HOW_TO_PASS,
            )
        elif not self.handed_over:
            factors = _common_rescale(grads, self.gradients)
            if factors:
                _warn_once(
                    "rescaled",
                    "L4: the gradients given to `apply_gradients` are those "
                    "of the remembered loss multiplied or divided by "
                    f"{', '.join(factors)} (manual loss scaling?), so the "
                    "remembered loss is not theirs and eta would be off by "
                    "that factor. " + _HOW_TO_PASS,
                )
        return self.losses[-1]


def _values(grad):
    return grad.values if isinstance(grad, tf.IndexedSlices) else grad


def _common_rescale(grads, returned):
    """The factors by which every one of ``grads`` is a gradient that
    `compute_gradients` returned, multiplied or divided; `None` unless all
    share the same factors and those do not depend on the gradients (clipping
    multiplies by a function of the gradients: that keeps the loss's meaning)."""
    common = None
    for grad in grads:
        factors = _factors(grad, returned)
        if not factors:
            return None
        if common is not None and factors != common:
            return None  # per-variable multipliers
        common = factors
    if common is None:
        return None
    values = [value for _, value in common]
    if all(isinstance(v, float) for v in values):
        product = 1.0
        for kind, value in common:
            product = product * value if kind == "*" else product / value
        if abs(product - 1.0) < 1e-6:
            return None
    return [f"{kind}{value}" for kind, value in common]


def _factors(tensor, returned):
    """The factors on the path from ``tensor`` back to a returned gradient
    through multiplications, divisions, casts and identities, as a tuple of
    ``(kind, value or name)``; `None` if there is no such path, or a factor
    depends on the gradients."""
    factors = []
    for _ in range(_MAX_DEPTH):
        if tensor.ref() in returned:
            return tuple(sorted(factors, key=str))
        op = tensor.op
        if op.type in _PASS_THROUGH:
            tensor = op.inputs[0]
            continue
        if op.type in _MULTIPLY:
            a, b = op.inputs
            tensor, factor = (a, b) if _reaches(a, returned) else (b, a)
            kind = "*"
        elif op.type in _DIVIDE:
            tensor, factor = op.inputs
            kind = "/"
        else:
            return None
        if _reaches(factor, returned):
            return None
        value = tf.get_static_value(factor)
        if value is not None and getattr(value, "size", 1) == 1:
            factors.append((kind, float(value)))
        else:
            factors.append((kind, _source(factor).name))
    return None


def _source(tensor):
    """The variable (or tensor) a factor reads: each division by a variable
    reads it anew."""
    while tensor.op.type in ("Identity", "ReadVariableOp") and tensor.op.inputs:
        tensor = tensor.op.inputs[0]
    return tensor


def _reaches(tensor, returned):
    """Whether ``tensor`` is computed from one of the ``returned`` tensors."""
    seen, stack = set(), [tensor]
    while stack and len(seen) < _MAX_ANCESTORS:
        t = stack.pop()
        if t.ref() in returned:
            return True
        if t.ref() in seen:
            continue
        seen.add(t.ref())
        stack.extend(t.op.inputs)
    return False


_warned = weakref.WeakKeyDictionary()


def _warn_once(kind, message):
    graph = tf.compat.v1.get_default_graph()
    kinds = _warned.setdefault(graph, set())
    if kind not in kinds:
        kinds.add(kind)
        tf.get_logger().warning(message)

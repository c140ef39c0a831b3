"""L4: loss-based stepsize adaptation (Rolínek & Martius, NeurIPS 2018) for TensorFlow.

``L4.L4Adam``, ``L4.L4Mom`` and ``L4.L4General`` are ``tf.compat.v1.train``
optimizers for Session scripts, tf-slim and eager code; ``L4.compat`` holds
the same optimizers for Keras (3, or 2 where TensorFlow uses it) and TF2
training loops.
"""

from L4.optimizers import L4Adam, L4General, L4Mom

__all__ = ["L4Adam", "L4General", "L4Mom"]
__version__ = "1.3.0"

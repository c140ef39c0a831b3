"""L4 optimizers for TF2 eager code and Keras 3, installed as ``L4.compat``.

``L4Adam``, ``L4Mom`` and ``L4General`` take the same arguments as ``L4.L4*``
and compute with the same rule (`L4.rule`); they are ``keras.optimizers.Optimizer``
subclasses. ``LogL4`` adds L4's effective learning rate and L_min to ``fit``'s logs.
"""

from L4.compat.optimizers import L4Adam, L4General, L4Mom, LogL4

__all__ = ["L4Adam", "L4General", "L4Mom", "LogL4"]

"""The original release's module path: ``import L4.L4 as L4``, ``from L4.L4 import L4Adam``."""

from L4.optimizers import L4Adam, L4General, L4Mom

__all__ = ["L4Adam", "L4General", "L4Mom"]

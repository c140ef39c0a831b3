"""L4 optimizers for TF2 eager code and Keras 3, installed as ``L4.compat``."""

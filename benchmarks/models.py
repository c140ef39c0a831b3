"""Models and data for the benchmarks, built from plain variables."""

import os
import sys

import numpy as np
import tensorflow as tf

sys.path.insert(
    0,
    os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "legacy_examples"
    ),
)
from mnist_mlp import initial_weights  # noqa: E402


def mlp_weights(inputs=784, seed=0):
    """The main example's MLP inputs-300-100-10: Xavier init, a zero output layer."""
    return initial_weights(inputs, seed)


def deep_weights(tensors=200, width=32, seed=0):
    """``tensors / 2`` dense layers of ``width`` units: many small variables."""
    rng = np.random.default_rng(seed)
    weights = []
    for _ in range(tensors // 2):
        weights += [
            rng.normal(0, 1 / np.sqrt(width), (width, width)).astype(np.float32),
            np.zeros(width, np.float32),
        ]
    return weights


def wide_weights(parameters, inputs=100, seed=0):
    """One dense layer with about ``parameters`` weights (for the scaling study)."""
    rng = np.random.default_rng(seed)
    units = max(1, parameters // inputs)
    return [rng.normal(0, 1 / np.sqrt(inputs), (inputs, units)).astype(np.float32)]


def dense_stack(x, weights, final_activation=False):
    """ReLU dense layers from (kernel, bias) pairs, or one kernel."""
    pairs = (
        list(zip(weights[::2], weights[1::2]))
        if len(weights) > 1
        else [(weights[0], None)]
    )
    for i, (w, b) in enumerate(pairs):
        x = tf.matmul(x, w) + (b if b is not None else 0.0)
        if i < len(pairs) - 1 or final_activation:
            x = tf.nn.relu(x)
    return x


def classification_loss(logits, labels):
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    )


def regression_loss(outputs):
    return 0.5 * tf.reduce_mean(tf.square(outputs))


def random_batch(inputs, batch=64, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.random((batch, inputs), dtype=np.float32),
        rng.integers(0, classes, batch).astype(np.int64),
    )

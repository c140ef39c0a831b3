"""Models and data for the benchmarks, built from plain variables."""

import numpy as np
import tensorflow as tf


def mlp_weights(inputs=784, sizes=(300, 100), classes=10, seed=0):
    """Xavier-uniform hidden layers, zero biases, a zero output layer."""
    rng = np.random.default_rng(seed)
    weights, fan_in = [], inputs
    for size in sizes:
        limit = np.sqrt(6.0 / (fan_in + size))
        weights += [rng.uniform(-limit, limit, (fan_in, size)).astype(np.float32),
                    np.zeros(size, np.float32)]
        fan_in = size
    weights += [np.zeros((fan_in, classes), np.float32), np.zeros(classes, np.float32)]
    return weights


def deep_weights(tensors=200, width=32, seed=0):
    """``tensors / 2`` dense layers of ``width`` units: many small variables."""
    rng = np.random.default_rng(seed)
    weights = []
    for _ in range(tensors // 2):
        weights += [rng.normal(0, 1 / np.sqrt(width), (width, width)).astype(np.float32),
                    np.zeros(width, np.float32)]
    return weights


def wide_weights(parameters, inputs=100, seed=0):
    """One dense layer with about ``parameters`` weights (for the scaling study)."""
    rng = np.random.default_rng(seed)
    units = max(1, parameters // inputs)
    return [rng.normal(0, 1 / np.sqrt(inputs), (inputs, units)).astype(np.float32)]


def dense_stack(x, weights, final_activation=False):
    """ReLU dense layers from (kernel, bias) pairs, or one kernel."""
    pairs = list(zip(weights[::2], weights[1::2])) if len(weights) > 1 else [(weights[0], None)]
    for i, (w, b) in enumerate(pairs):
        x = tf.matmul(x, w) + (b if b is not None else 0.0)
        if i < len(pairs) - 1 or final_activation:
            x = tf.nn.relu(x)
    return x


def classification_loss(logits, labels):
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))


def regression_loss(outputs):
    return 0.5 * tf.reduce_mean(tf.square(outputs))


def random_batch(inputs, batch=64, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((batch, inputs), dtype=np.float32),
            rng.integers(0, classes, batch).astype(np.int64))

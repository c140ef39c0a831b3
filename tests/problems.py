"""Small deterministic problems with numpy losses and gradients written by hand."""

import copy

import numpy as np
import tensorflow as tf


class Problem:
    """Data ``x``, ``y`` and initial parameters ``init``."""

    def batch(self, x, y):
        """The same problem on the examples ``x``, ``y`` only."""
        part = copy.copy(self)
        part.x, part.y = x, y
        return part


class LeastSquares(Problem):
    """``L = mean_n 0.5 * ||x_n W + b - y_n||^2``; its loss falls steadily."""

    def __init__(self, seed=0, n=32, d=4, k=3):
        rng = np.random.default_rng(seed)
        self.x = rng.normal(size=(n, d))
        self.y = self.x @ rng.normal(size=(d, k)) + 0.3 * rng.normal(size=(n, k))
        self.init = [rng.normal(size=(d, k)), rng.normal(size=(k,))]

    def numpy_loss_and_grads(self, params):
        w, b = params
        r = self.x @ w + b - self.y
        n = len(self.x)
        return 0.5 * np.mean(np.sum(r * r, axis=1)), [self.x.T @ r / n, r.mean(axis=0)]

    def tf_loss(self, params):
        w, b = params
        x = tf.constant(self.x, w.dtype.base_dtype)
        y = tf.constant(self.y, w.dtype.base_dtype)
        r = tf.matmul(x, w) + b - y
        return 0.5 * tf.reduce_mean(tf.reduce_sum(r * r, axis=1))


class Logistic(Problem):
    """``L = mean_n softplus(-y_n (x_n . w + c))`` with labels ``y`` in {-1, 1}."""

    def __init__(self, seed=1, n=40, d=5):
        rng = np.random.default_rng(seed)
        self.x = rng.normal(size=(n, d))
        self.y = np.sign(self.x @ rng.normal(size=d) + 0.5 * rng.normal(size=n))
        self.init = [0.1 * rng.normal(size=(d,)), np.zeros(())]

    def numpy_loss_and_grads(self, params):
        w, c = params
        z = -self.y * (self.x @ w + c)
        loss = np.mean(np.logaddexp(0.0, z))
        dz = 1.0 / (1.0 + np.exp(-z)) / len(self.x)  # d softplus(z)/dz = sigmoid(z)
        return loss, [self.x.T @ (-self.y * dz), np.sum(-self.y * dz)]

    def tf_loss(self, params):
        w, c = params
        x = tf.constant(self.x, w.dtype.base_dtype)
        y = tf.constant(self.y, w.dtype.base_dtype)
        return tf.reduce_mean(tf.nn.softplus(-y * (tf.linalg.matvec(x, w) + c)))


PROBLEMS = {"least_squares": LeastSquares, "logistic": Logistic}

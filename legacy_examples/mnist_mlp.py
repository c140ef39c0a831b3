"""The original release's MNIST notebook as a TF1 Session script.

An MLP 784-300-100-10 (ReLU, Xavier init, zero-initialised output layer),
batch 64, placeholders and feed_dict, trained with L4Adam (fraction 0.25 and
the default 0.15), L4Mom (fraction 0.25) and, for comparison, Adam (lr 0.001,
epsilon 1e-4), momentum SGD (lr 0.05, momentum 0.9) and SGD (lr 0.7).

Data: MNIST from a local ``mnist.npz`` (the Keras file format) with
``--mnist``; by default scikit-learn's 8x8 digits (64 inputs, 1797 images),
which ship with scikit-learn and need no download.

    python legacy_examples/mnist_mlp.py --epochs 10 --output results/
"""

import argparse
import os
import sys
import time

import numpy as np
import tensorflow as tf

import L4

OPTIMIZERS = {
    "L4Adam(0.25)": lambda: L4.L4Adam(fraction=0.25),
    "L4Adam": lambda: L4.L4Adam(),
    "L4Mom(0.25)": lambda: L4.L4Mom(fraction=0.25),
    "Adam": lambda: tf.compat.v1.train.AdamOptimizer(0.001, epsilon=1e-4),
    "MomentumSGD": lambda: tf.compat.v1.train.MomentumOptimizer(0.05, 0.9),
    "SGD": lambda: tf.compat.v1.train.GradientDescentOptimizer(0.7),
}


def load_data(mnist_path=None, seed=0):
    """(x_train, y_train, x_test, y_test): inputs flattened to [0, 1], int64 labels."""
    if mnist_path:
        with np.load(mnist_path) as data:
            x_train, y_train = data["x_train"], data["y_train"]
            x_test, y_test = data["x_test"], data["y_test"]
        scale = 255.0
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        order = np.random.default_rng(seed).permutation(len(digits.target))
        x, y = digits.images[order], digits.target[order]
        split = len(y) * 4 // 5
        x_train, y_train, x_test, y_test = x[:split], y[:split], x[split:], y[split:]
        scale = 16.0

    def flat(x):
        return x.reshape(len(x), -1).astype(np.float32) / scale

    return (
        flat(x_train),
        y_train.astype(np.int64),
        flat(x_test),
        y_test.astype(np.int64),
    )


def initial_weights(inputs, seed, sizes=(300, 100), classes=10):
    """Xavier-uniform hidden layers, zero biases, a zero output layer (numpy)."""
    rng = np.random.default_rng(seed)
    weights, fan_in = [], inputs
    for size in sizes:
        limit = np.sqrt(6.0 / (fan_in + size))
        weights += [
            rng.uniform(-limit, limit, (fan_in, size)).astype(np.float32),
            np.zeros(size, np.float32),
        ]
        fan_in = size
    weights += [np.zeros((fan_in, classes), np.float32), np.zeros(classes, np.float32)]
    return weights


def mlp_logits(x, weights):
    """ReLU hidden layers, then a linear output layer."""
    hidden = x
    for w, b in zip(weights[:-2:2], weights[1:-2:2]):
        hidden = tf.nn.relu(tf.matmul(hidden, w) + b)
    return tf.matmul(hidden, weights[-2]) + weights[-1]


def epoch_batches(n, batch_size, rng):
    """The minibatches of one epoch: a fresh permutation, cut into batches."""
    order = rng.permutation(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def train(name, data, epochs, batch_size, seed, progress):
    """Trains one optimizer in its own graph; its per-epoch training losses and more."""
    x_train, y_train, x_test, y_test = data
    with tf.Graph().as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, x_train.shape[1]])
        labels = tf.compat.v1.placeholder(tf.int64, [None])
        weights = [
            tf.compat.v1.Variable(w) for w in initial_weights(x_train.shape[1], seed)
        ]
        logits = mlp_logits(images, weights)
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        )
        correct = tf.equal(tf.argmax(logits, 1), labels)
        accuracy = tf.reduce_mean(tf.cast(correct, tf.float32))
        train_op = OPTIMIZERS[name]().minimize(loss)

        rng = np.random.default_rng(seed)
        start = time.perf_counter()
        losses = []
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for _ in range(epochs):
                for batch in epoch_batches(len(y_train), batch_size, rng):
                    sess.run(train_op, {images: x_train[batch], labels: y_train[batch]})
                losses.append(float(sess.run(loss, {images: x_train, labels: y_train})))
                progress()
            seconds = time.perf_counter() - start
            test_accuracy = float(sess.run(accuracy, {images: x_test, labels: y_test}))
    return {"losses": losses, "test_accuracy": test_accuracy, "seconds": seconds}


class ProgressBar:
    """A one-line progress bar on stderr."""

    def __init__(self, total, width=40):
        self.total, self.done, self.width = total, 0, width

    def __call__(self):
        self.done += 1
        filled = self.width * self.done // self.total
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (self.width - filled)}] "
            f"{self.done}/{self.total} epochs"
        )
        if self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def plot(results, path, inputs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, result in results.items():
        ax.plot(
            range(1, len(result["losses"]) + 1),
            result["losses"],
            label=name,
            linestyle="-" if name.startswith("L4") else "--",
        )
    ax.set(
        yscale="log",
        xlabel="epoch",
        ylabel="training loss (full training set)",
        title=f"MLP {inputs}-300-100-10, Session script",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--epochs", type=int, default=10, help="epochs per optimizer (default 10)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="minibatch size (default 64)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the init and the batches (default 0)",
    )
    parser.add_argument(
        "--optimizers",
        default=",".join(OPTIMIZERS),
        help=f"comma-separated subset of {', '.join(OPTIMIZERS)} (default: all)",
    )
    parser.add_argument(
        "--mnist",
        help="a local mnist.npz (Keras format); default: scikit-learn's digits",
    )
    parser.add_argument(
        "--output",
        default="results",
        help="folder for the loss plot mnist_mlp_losses.png (default results/)",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    unknown = sorted(set(names) - set(OPTIMIZERS))
    if unknown:
        parser.error(
            f"unknown optimizers {unknown}; choose from {', '.join(OPTIMIZERS)}"
        )

    tf.compat.v1.disable_v2_behavior()
    data = load_data(args.mnist, args.seed)
    print(
        f"{len(data[1])} training and {len(data[3])} test images of {data[0].shape[1]} pixels"
    )
    progress = ProgressBar(args.epochs * len(names))
    results = {
        name: train(name, data, args.epochs, args.batch_size, args.seed, progress)
        for name in names
    }

    print(
        f"\n{'optimizer':<14}{'training loss':>15}{'test accuracy':>15}{'time (s)':>10}"
    )
    for name, result in results.items():
        print(
            f"{name:<14}{result['losses'][-1]:>15.4g}{result['test_accuracy']:>15.4f}"
            f"{result['seconds']:>10.1f}"
        )
    os.makedirs(args.output, exist_ok=True)
    path = os.path.join(args.output, "mnist_mlp_losses.png")
    plot(results, path, data[0].shape[1])
    print(f"\nplot: {path}")
    return results


if __name__ == "__main__":
    main()

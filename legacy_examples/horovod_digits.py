"""Data-parallel L4 with Horovod: a TF1 Session script, or a TF2 loop.

Each of N processes trains the MLP of mnist_mlp.py on its 1/N of every batch
of 64 (scikit-learn's digits). Horovod averages the gradients across the
processes; ``reduce_loss=hvd.allreduce`` makes L4 average the loss alike, so
every process takes the step one process would take on the whole batch.
Without it, each process would set its stepsize from its own loss, and the
processes would drift apart.

    horovodrun -np 2 -H localhost:2 --gloo python legacy_examples/horovod_digits.py
    horovodrun -np 2 -H localhost:2 --gloo python legacy_examples/horovod_digits.py --tf2

``--save DIR`` writes each process' final weights to ``DIR/rank{r}.npz``.
"""

import argparse
import os

import horovod.tensorflow as hvd
import numpy as np
import tensorflow as tf
from mnist_mlp import initial_weights, load_data, mlp_logits

import L4


def shards(data, epochs, batch_size, seed):
    """This process' part of every full batch: the same batches on every rank."""
    x_train, y_train = data[0], data[1]
    rng = np.random.default_rng(seed)
    part = batch_size // hvd.size()
    for _ in range(epochs):
        order = rng.permutation(len(y_train))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            batch = order[start : start + batch_size]
            mine = batch[hvd.rank() * part : (hvd.rank() + 1) * part]
            yield x_train[mine], y_train[mine]


def mean_loss(images, labels, weights):
    logits = mlp_logits(images, weights)
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    )


def train_session(data, args, reduce_loss):
    """A TF1 graph and Session, with Horovod's DistributedOptimizer."""
    with tf.Graph().as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, data[0].shape[1]])
        labels = tf.compat.v1.placeholder(tf.int64, [None])
        weights = [
            tf.compat.v1.Variable(w)
            for w in initial_weights(data[0].shape[1], args.seed)
        ]
        loss = mean_loss(images, labels, weights)
        opt = hvd.DistributedOptimizer(L4.L4Adam(reduce_loss=reduce_loss))
        train_op = opt.minimize(loss)
        broadcast = hvd.broadcast_global_variables(0)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(broadcast)
            for x, y in shards(data, args.epochs, args.batch_size, args.seed):
                sess.run(train_op, {images: x, labels: y})
            return sess.run(weights)


def train_tf2(data, args, reduce_loss):
    """A TF2 loop: `hvd.DistributedGradientTape` and `L4.compat`."""
    import L4.compat

    weights = [tf.Variable(w) for w in initial_weights(data[0].shape[1], args.seed)]
    hvd.broadcast_variables(weights, root_rank=0)
    opt = L4.compat.L4Adam(reduce_loss=reduce_loss)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = mean_loss(x, y, weights)
        grads = hvd.DistributedGradientTape(tape).gradient(loss, weights)
        opt.apply_gradients(zip(grads, weights), loss=loss)

    for x, y in shards(data, args.epochs, args.batch_size, args.seed):
        step(x, y)
    return [w.numpy() for w in weights]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tf2", action="store_true", help="a TF2 loop, not a Session")
    parser.add_argument("--epochs", type=int, default=1, help="epochs (default 1)")
    parser.add_argument(
        "--batch-size", type=int, default=64, help="the full batch (default 64)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--save", help="folder for rank{r}.npz, the final weights")
    parser.add_argument(
        "--local-loss",
        action="store_true",
        help="leave out reduce_loss: each process uses its own loss (drifts)",
    )
    args = parser.parse_args(argv)

    hvd.init()
    if args.batch_size % hvd.size():
        parser.error(f"--batch-size must be a multiple of {hvd.size()} processes")
    data = load_data(seed=args.seed)
    reduce_loss = None if args.local_loss else hvd.allreduce
    train = train_tf2 if args.tf2 else train_session
    weights = train(data, args, reduce_loss)
    print(
        f"rank {hvd.rank()} of {hvd.size()}: |weights| = {np.sqrt(sum(np.sum(w**2) for w in weights)):.6f}"
    )
    if args.save:
        np.savez(os.path.join(args.save, f"rank{hvd.rank()}.npz"), *weights)


if __name__ == "__main__":
    main()

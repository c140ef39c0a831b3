"""One process of test_legacy_training's SyncReplicasOptimizer runs.

``--job ps``: a parameter server (runs until killed). ``--job worker``: one of
two workers of between-graph replication, training a least-squares model on
its half of the batch with ``SyncReplicasOptimizer(L4Adam(carry_loss=True),
replicas_to_aggregate=2)`` under ``MonitoredTrainingSession`` (the sync hook,
a ``checkpoint_dir``, so its summary hook runs ``merge_all``), inputs fed
(``--inputs feed``) or from a queue (``--inputs queue``); the chief writes the
final variables to ``--out``. ``--job single``: one process on both halves,
``L4Adam().minimize``. ``--job slim``: tf-slim's ``learning.train`` with
``sync_optimizer`` on both halves, one replica.
"""

import argparse
import os
import sys
import threading
import time

import numpy as np
import tensorflow as tf

import L4

STEPS = 10


def data(half=None):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    y = (x @ rng.normal(size=(4, 2)) + 0.3 * rng.normal(size=(16, 2))).astype(
        np.float32
    )
    if half is None:
        return x, y
    rows = slice(8 * half, 8 * (half + 1))
    return x[rows], y[rows]


def model(x, y):
    w = tf.compat.v1.get_variable(
        "w", initializer=tf.constant(np.eye(4, 2, dtype=np.float32))
    )
    b = tf.compat.v1.get_variable("b", initializer=tf.zeros([2]))
    r = tf.matmul(x, w) + b - y
    return 0.5 * tf.reduce_mean(tf.reduce_sum(r * r, axis=1)), [w, b]


def inputs(kind, half):
    x, y = data(half)
    if kind == "feed":
        xp = tf.compat.v1.placeholder(tf.float32, x.shape)
        yp = tf.compat.v1.placeholder(tf.float32, y.shape)
        return xp, yp, {xp: x, yp: y}
    # A queue that hands out the same batch at every dequeue, filled by a
    # queue runner, as the TF1 input pipelines do.
    queue = tf.queue.FIFOQueue(4, [tf.float32, tf.float32], [x.shape, y.shape])
    enqueue = queue.enqueue([tf.constant(x), tf.constant(y)])
    tf.compat.v1.train.add_queue_runner(
        tf.compat.v1.train.QueueRunner(queue, [enqueue])
    )
    xq, yq = queue.dequeue()
    return xq, yq, None


def worker(args):
    cluster = tf.train.ClusterSpec({"ps": [args.ps], "worker": args.workers.split(",")})
    server = tf.compat.v1.train.Server(
        cluster, job_name="worker", task_index=args.index
    )
    is_chief = args.index == 0
    setter = tf.compat.v1.train.replica_device_setter(
        cluster=cluster, worker_device=f"/job:worker/task:{args.index}"
    )
    with tf.compat.v1.device(setter):
        global_step = tf.compat.v1.train.get_or_create_global_step()
        x, y, feed = inputs(args.inputs, args.index)
        loss, params = model(x, y)
        opt = tf.compat.v1.train.SyncReplicasOptimizer(
            L4.L4Adam(carry_loss=True), replicas_to_aggregate=2, total_num_replicas=2
        )
        train_op = opt.minimize(loss, global_step=global_step)
    hooks = [
        opt.make_session_run_hook(is_chief, num_tokens=0),
        tf.compat.v1.train.StopAtStepHook(last_step=STEPS),
    ]
    with tf.compat.v1.train.MonitoredTrainingSession(
        master=server.target,
        is_chief=is_chief,
        checkpoint_dir=args.checkpoint_dir if is_chief else None,
        hooks=hooks,
        stop_grace_period_secs=2,
    ) as sess:
        while not sess.should_stop():
            sess.run(train_op, feed_dict=feed)
        if is_chief:
            # Without the hooks, which would wait for the next step.
            final = sess.run_step_fn(
                lambda step_context: step_context.session.run(params)
            )
            np.savez(args.out, *final)


def single(args):
    x, y = data()
    loss, params = model(tf.constant(x), tf.constant(y))
    train_op = L4.L4Adam().minimize(loss)
    with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        for _ in range(STEPS):
            sess.run(train_op)
        np.savez(args.out, *sess.run(params))


def slim(args):
    """All steps of ``learning.train`` must run. Its shutdown then waits out
    the Supervisor's grace period (120 s) for the chief queue runner, which
    waits for a gradient that never comes, whatever the optimizer inside
    (TensorFlow's AdamOptimizer too): so it trains in a thread, and this
    process reads the final checkpoint and exits."""
    import tf_slim

    x, y = data()
    loss, params = model(tf.constant(x), tf.constant(y))
    opt = tf.compat.v1.train.SyncReplicasOptimizer(
        L4.L4Adam(carry_loss=True), replicas_to_aggregate=1, total_num_replicas=1
    )
    train_op = tf_slim.learning.create_train_op(loss, opt)
    saver = tf.compat.v1.train.Saver()  # before learning.train finalizes the graph
    trainer = threading.Thread(
        target=tf_slim.learning.train,
        args=(train_op, args.checkpoint_dir),
        kwargs=dict(
            number_of_steps=STEPS,
            sync_optimizer=opt,
            save_summaries_secs=1,
            graph=tf.compat.v1.get_default_graph(),
        ),
        daemon=True,
    )
    trainer.start()
    final = os.path.join(args.checkpoint_dir, f"model.ckpt-{STEPS}.index")
    while not os.path.exists(final):
        time.sleep(0.2)
    time.sleep(1)  # the checkpoint's files are written one after the other
    with tf.compat.v1.Session() as sess:
        saver.restore(sess, final[: -len(".index")])
        np.savez(args.out, *sess.run(params))
    sys.stdout.flush()
    os._exit(0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", choices=["ps", "worker", "single", "slim"])
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--ps")
    parser.add_argument("--workers")
    parser.add_argument("--inputs", choices=["feed", "queue"], default="feed")
    parser.add_argument("--behavior", choices=["v1", "graph"], default="v1")
    parser.add_argument("--checkpoint-dir")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.behavior == "v1":
        tf.compat.v1.disable_v2_behavior()  # ref variables
    else:
        tf.compat.v1.disable_eager_execution()  # resource variables
    if args.job == "ps":
        cluster = tf.train.ClusterSpec(
            {"ps": [args.ps], "worker": args.workers.split(",")}
        )
        tf.compat.v1.train.Server(cluster, job_name="ps", task_index=0).join()
    else:
        {"worker": worker, "single": single, "slim": slim}[args.job](args)
    sys.stdout.flush()


if __name__ == "__main__":
    main()

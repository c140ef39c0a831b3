"""Trains, saves and resumes L4 in a process of its own (run by test_resume.py).

    python resume_worker.py FRONT PHASE DIR

FRONT is ``saver`` (tf.compat.v1 Session, L4.L4Adam), ``checkpoint`` (custom
loop, L4.compat.L4Mom, tf.train.Checkpoint) or ``keras`` (model.fit,
L4.compat.L4Adam, a .keras file). PHASE ``first`` trains STEPS steps, saves,
trains STEPS more and writes the uninterrupted weights to DIR/whole.npz;
PHASE ``second`` restores what ``first`` saved, trains STEPS steps and writes
DIR/resumed.npz.
"""

import os
import sys

import numpy as np
import tensorflow as tf

from problems import LeastSquares

STEPS = 15
PROBLEM = LeastSquares(n=48)


def batch(step):
    rows = [(step * 16 + i) % len(PROBLEM.x) for i in range(16)]
    return PROBLEM.x[rows].astype(np.float32), PROBLEM.y[rows].astype(np.float32)


def saver(phase, directory):
    import L4

    tf.compat.v1.disable_v2_behavior()
    w = tf.compat.v1.get_variable("w", initializer=PROBLEM.init[0].astype(np.float32))
    b = tf.compat.v1.get_variable("b", initializer=PROBLEM.init[1].astype(np.float32))
    x = tf.compat.v1.placeholder(tf.float32, [None, 4])
    y = tf.compat.v1.placeholder(tf.float32, [None, 3])
    r = tf.matmul(x, w) + b - y
    train_op = L4.L4Adam().minimize(0.5 * tf.reduce_mean(tf.reduce_sum(r * r, axis=1)))
    saver = tf.compat.v1.train.Saver()
    path = os.path.join(directory, "model.ckpt")
    with tf.compat.v1.Session() as sess:
        if phase == "first":
            sess.run(tf.compat.v1.global_variables_initializer())
        else:
            saver.restore(sess, path)
        start = sess.run(tf.compat.v1.train.get_global_step())
        for step in range(start, start + STEPS):
            bx, by = batch(step)
            sess.run(train_op, {x: bx, y: by})
        if phase == "first":
            saver.save(sess, path)
            for step in range(STEPS, 2 * STEPS):
                bx, by = batch(step)
                sess.run(train_op, {x: bx, y: by})
        return sess.run([w, b])


def checkpoint(phase, directory):
    import L4.compat

    w, b = (tf.Variable(v.astype(np.float32)) for v in PROBLEM.init)
    opt = L4.compat.L4Mom()
    step_var = tf.Variable(0, dtype=tf.int64)
    ckpt = tf.train.Checkpoint(w=w, b=b, optimizer=opt, step=step_var)

    @tf.function
    def train_step(bx, by):
        with tf.GradientTape() as tape:
            r = tf.matmul(bx, w) + b - by
            loss = 0.5 * tf.reduce_mean(tf.reduce_sum(r * r, axis=1))
        opt.apply_gradients(zip(tape.gradient(loss, [w, b]), [w, b]), loss=loss)
        step_var.assign_add(1)

    def train(steps):
        for _ in range(steps):
            train_step(*batch(int(step_var.numpy())))

    path = os.path.join(directory, "ckpt")
    if phase == "first":
        train(STEPS)
        ckpt.write(path)
        train(STEPS)
    else:
        opt.build([w, b])
        ckpt.read(path).assert_consumed()
        train(STEPS)
    return [w.numpy(), b.numpy()]


def keras_file(phase, directory):
    import keras

    import L4.compat

    xs = np.concatenate([batch(s)[0] for s in range(2 * STEPS)])
    ys = np.concatenate([batch(s)[1] for s in range(2 * STEPS)])
    half = len(xs) // 2
    path = os.path.join(directory, "model.keras")
    if phase == "first":
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        model.set_weights([v.astype(np.float32) for v in PROBLEM.init])
        model.compile(optimizer=L4.compat.L4Adam(), loss="mse")
        model.fit(xs[:half], ys[:half], batch_size=16, shuffle=False, verbose=0)
        model.save(path)
        model.fit(xs[half:], ys[half:], batch_size=16, shuffle=False, verbose=0)
    else:
        model = keras.models.load_model(path)  # no custom_objects
        model.fit(xs[half:], ys[half:], batch_size=16, shuffle=False, verbose=0)
    return model.get_weights()


if __name__ == "__main__":
    front, phase, directory = sys.argv[1:4]
    run = {"saver": saver, "checkpoint": checkpoint, "keras": keras_file}[front]
    weights = run(phase, directory)
    name = "whole.npz" if phase == "first" else "resumed.npz"
    np.savez(os.path.join(directory, name), *weights)

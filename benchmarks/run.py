"""Benchmarks of L4 against TensorFlow's own optimizers, measured side by side.

    python benchmarks/run.py --quick              # about 4 minutes on 2 CPU cores
    python benchmarks/run.py                      # the full run, about 12 minutes
    python benchmarks/run.py --only speed,memory  # some parts

Parts (written to --output as Markdown tables, PNG plots and results.json):
- speed:   cost per step as ratios L4Adam / Adam and L4Mom / momentum SGD, in a
           Session, in tf.function, with jit_compile=True and in Keras'
           model.fit, on the MLPs 784-300-100-10 and 784-2048-2048-10 (batch
           64) and on 100 dense layers (200 tensors). Each ratio is the
           median (and quartiles) over repetitions that alternate the two.
           One thread (--threads), as the targets are stated.
- memory:  optimizer state in bytes, and graph build time.
- scaling: the Session ratios for one dense layer of 1e4 to 1e7 parameters.
- quality: final training loss (median of 3 seeds) on a badly conditioned
           linear regression, the digits MLP and a small CNN: L4Adam and L4Mom
           at their defaults and at fraction 0.25 against Adam and momentum SGD
           over a learning-rate grid.
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
from models import (  # noqa: E402
    classification_loss,
    deep_weights,
    dense_stack,
    keras_dense_stack,
    mlp_weights,
    random_batch,
    regression_loss,
    wide_mlp_weights,
    wide_weights,
)

import L4  # noqa: E402
import L4.compat  # noqa: E402

PAIRS = {  # name: (baseline, L4) factories for (tf.compat.v1, Keras)
    "L4Adam / Adam": (
        (lambda: tf.compat.v1.train.AdamOptimizer(1e-3), L4.L4Adam),
        (lambda: keras.optimizers.Adam(1e-3), L4.compat.L4Adam),
    ),
    "L4Mom / momentum SGD": (
        (lambda: tf.compat.v1.train.MomentumOptimizer(0.05, 0.9), L4.L4Mom),
        (lambda: keras.optimizers.SGD(0.05, momentum=0.9), L4.compat.L4Mom),
    ),
}


# -- Timing ------------------------------------------------------------------

SESSION_CONFIG = tf.compat.v1.ConfigProto()


def set_threads(threads):
    """The same number of threads for eager code, tf.function and Sessions."""
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    SESSION_CONFIG.intra_op_parallelism_threads = threads
    SESSION_CONFIG.inter_op_parallelism_threads = threads


def median_ratio(run_baseline, run_l4, steps, reps):
    """time(L4) / time(baseline) over ``reps`` alternating repetitions of ``steps`` steps.

    Returns a dict: the median ratio, its quartiles (how much the machine's
    noise moves it) and the baseline's median seconds per step.
    """
    for run in (run_baseline, run_l4):
        run(max(3, steps // 5))  # warm up, trace, compile
    ratios, seconds = [], []
    for _ in range(reps):
        times = []
        for run in (run_baseline, run_l4):
            start = time.perf_counter()
            measured = run(steps)  # a runner may time its steps itself
            times.append(time.perf_counter() - start if measured is None else measured)
        ratios.append(times[1] / times[0])
        seconds.append(times[0] / steps)
    low, ratio, high = np.percentile(ratios, [25, 50, 75])
    return {
        "ratio": float(ratio),
        "ratio_q1": float(low),
        "ratio_q3": float(high),
        "baseline_ms": 1e3 * float(np.median(seconds)),
    }


def model_problem(kind, inputs_seed=0):
    """(weights, x, y, loss_of(outputs, y)) for a model kind."""
    if kind in ("mlp", "wide_mlp"):
        x, y = random_batch(784, seed=inputs_seed)
        weights = mlp_weights() if kind == "mlp" else wide_mlp_weights()
        return weights, x, y, classification_loss
    if kind == "deep":
        x = np.random.default_rng(inputs_seed).random((64, 32), dtype=np.float32)
        return deep_weights(200), x, None, lambda out, y: regression_loss(out)
    parameters = int(kind)
    x = np.random.default_rng(inputs_seed).random((64, 100), dtype=np.float32)
    return wide_weights(parameters), x, None, lambda out, y: regression_loss(out)


def session_runner(kind, make_optimizer):
    weights, x, y, loss_of = model_problem(kind)
    graph = tf.Graph()
    with graph.as_default():
        var_list = [tf.compat.v1.Variable(w) for w in weights]
        labels = tf.constant(y) if y is not None else None
        loss = loss_of(dense_stack(tf.constant(x), var_list), labels)
        train_op = make_optimizer().minimize(loss, var_list=var_list)
        sess = tf.compat.v1.Session(graph=graph, config=SESSION_CONFIG)
        sess.run(tf.compat.v1.global_variables_initializer())

    def run(steps):
        for _ in range(steps):
            sess.run(train_op)

    return run


def function_runner(kind, make_optimizer, jit_compile):
    weights, x, y, loss_of = model_problem(kind)
    var_list = [tf.Variable(w) for w in weights]
    opt = make_optimizer()
    is_l4 = isinstance(opt, L4.compat.L4General)
    x = tf.constant(x)
    labels = tf.constant(y) if y is not None else None

    @tf.function(jit_compile=jit_compile)
    def step():
        with tf.GradientTape() as tape:
            loss = loss_of(dense_stack(x, var_list), labels)
        grads = tape.gradient(loss, var_list)
        if is_l4:
            opt.apply_gradients(zip(grads, var_list), loss=loss)
        else:
            opt.apply_gradients(zip(grads, var_list))

    def run(steps):
        for _ in range(steps):
            step()

    return run


class _StepTimes(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def fit_runner(kind, make_optimizer):
    """Keras' model.fit on ``steps`` copies of one batch, the model built from
    the same weights as the other runners. Its steps are timed from the end of
    the first to the end of the last (fit's set-up is not a step)."""
    weights, x, y, loss_of = model_problem(kind)
    model = keras_dense_stack(weights)
    model.compile(
        optimizer=make_optimizer(),
        # Keras hands the labels over as floats.
        loss=lambda labels, outputs: loss_of(outputs, tf.cast(labels, tf.int64)),
        jit_compile=False,
    )
    if y is None:
        y = np.zeros((len(x), 1), np.float32)  # the regression loss ignores it

    step_times = _StepTimes()

    def run(steps):
        model.fit(
            np.tile(x, (steps + 1, 1)),
            np.tile(y, (steps + 1,) + (1,) * (y.ndim - 1)),
            batch_size=len(x),
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[step_times],
        )
        return step_times.ends[-1] - step_times.ends[0]

    return run


SPEED_MODELS = {
    "mlp": "MLP 784-300-100-10",
    "wide_mlp": "MLP 784-2048-2048-10",
    "deep": "100 layers (200 tensors)",
}
SPEED_MODES = ("Session", "tf.function", "jit_compile=True", "Keras fit")


def speed(quick):
    rows = []
    steps, reps = (30, 5) if quick else (100, 9)
    for kind, label in SPEED_MODELS.items():
        for mode in SPEED_MODES:
            for pair, (v1, keras_pair) in PAIRS.items():
                if mode == "Session":
                    runs = [session_runner(kind, make) for make in v1]
                elif mode == "Keras fit":
                    runs = [fit_runner(kind, make) for make in keras_pair]
                else:
                    runs = [
                        function_runner(kind, make, mode != "tf.function")
                        for make in keras_pair
                    ]
                row = {"model": label, "mode": mode, "pair": pair}
                row.update(median_ratio(*runs, steps, reps))
                rows.append(row)
                print(
                    f"  {label:<26}{mode:<18}{pair:<22}{row['ratio']:6.2f}", flush=True
                )
    return rows


def scaling(quick):
    rows = []
    for parameters in (10**4, 10**5, 10**6, 10**7):
        steps = 20 if parameters < 10**7 else 5
        reps = 5 if quick else 9
        for pair, (v1, _) in PAIRS.items():
            runs = [session_runner(str(parameters), make) for make in v1]
            row = {"parameters": parameters, "pair": pair}
            row.update(median_ratio(*runs, steps, reps))
            rows.append(row)
            print(f"  {parameters:>10,} {pair:<22}{row['ratio']:6.2f}", flush=True)
    return rows


def memory():
    """Optimizer state in bytes for the MLP, and graph build time."""
    rows = []
    for v1, keras_pair in PAIRS.values():
        for make in v1:
            graph = tf.Graph()
            with graph.as_default():
                weights, x, y, loss_of = model_problem("mlp")
                var_list = [tf.compat.v1.Variable(w) for w in weights]
                loss = loss_of(dense_stack(tf.constant(x), var_list), tf.constant(y))
                opt = make()
                start = time.perf_counter()
                opt.minimize(loss, var_list=var_list)
                build = time.perf_counter() - start
                state = sum(
                    v.shape.num_elements() * v.dtype.base_dtype.size
                    for v in opt.variables()
                )
            rows.append(
                {
                    "front end": "tf.compat.v1",
                    "optimizer": type(opt).__name__,
                    "state_bytes": int(state),
                    "build_s": build,
                }
            )
        for make in keras_pair:
            opt = make()
            opt.build([tf.Variable(w) for w in mlp_weights()])
            state = sum(
                int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in opt.variables
            )
            rows.append(
                {
                    "front end": "Keras",
                    "optimizer": type(opt).__name__,
                    "state_bytes": int(state),
                    "build_s": None,
                }
            )
    for row in rows:
        print(
            f"  {row['front end']:<14}{row['optimizer']:<20}{row['state_bytes']:>12,} bytes",
            flush=True,
        )
    return rows


# -- Quality -----------------------------------------------------------------

ADAM_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
MOMENTUM_RATES = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)


def quality_optimizers():
    configs = {
        "L4Adam": lambda: L4.L4Adam(),
        "L4Adam(0.25)": lambda: L4.L4Adam(fraction=0.25),
        "L4Mom": lambda: L4.L4Mom(),
        "L4Mom(0.25)": lambda: L4.L4Mom(fraction=0.25),
    }
    for lr in ADAM_RATES:
        configs[f"Adam lr={lr:g}"] = lambda lr=lr: tf.compat.v1.train.AdamOptimizer(lr)
    for lr in MOMENTUM_RATES:
        configs[f"momentum lr={lr:g}"] = lambda lr=lr: (
            tf.compat.v1.train.MomentumOptimizer(lr, 0.9)
        )
    return configs


def digits(seed):
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data.target))
    return (data.data[order] / 16.0).astype(np.float32), data.target[order].astype(
        np.int64
    )


def linear_regression(make_optimizer, seed, quick):
    """A badly conditioned least-squares problem (condition number 1e4), full batch."""
    rng = np.random.default_rng(seed)
    d = 50
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    x = (rng.normal(size=(500, d)) @ np.diag(np.logspace(0, -2, d)) @ q).astype(
        np.float32
    )
    y = (x @ rng.normal(size=d) + 0.01 * rng.normal(size=500)).astype(np.float32)
    with tf.Graph().as_default():
        w = tf.compat.v1.Variable(np.zeros(d, np.float32))
        loss = 0.5 * tf.reduce_mean(tf.square(tf.linalg.matvec(tf.constant(x), w) - y))
        train_op = make_optimizer().minimize(loss)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for _ in range(300 if quick else 1000):
                sess.run(train_op)
            return float(sess.run(loss))


def digits_model(make_optimizer, seed, quick, cnn):
    x_all, y_all = digits(seed)
    epochs = (5 if quick else 15) if cnn else (10 if quick else 35)
    rng = np.random.default_rng(seed)
    with tf.Graph().as_default():
        tf.compat.v1.set_random_seed(seed)
        images = tf.compat.v1.placeholder(tf.float32, [None, 64])
        labels = tf.compat.v1.placeholder(tf.int64, [None])
        if cnn:
            init = tf.compat.v1.glorot_uniform_initializer(seed=seed)
            k1 = tf.compat.v1.get_variable("k1", [3, 3, 1, 16], initializer=init)
            k2 = tf.compat.v1.get_variable("k2", [3, 3, 16, 32], initializer=init)
            w = tf.compat.v1.get_variable(
                "w", [4 * 4 * 32, 10], initializer=tf.compat.v1.zeros_initializer()
            )
            b = tf.compat.v1.get_variable(
                "b", [10], initializer=tf.compat.v1.zeros_initializer()
            )
            net = tf.nn.relu(
                tf.nn.conv2d(tf.reshape(images, [-1, 8, 8, 1]), k1, 1, "SAME")
            )
            net = tf.nn.max_pool2d(net, 2, 2, "VALID")
            net = tf.nn.relu(tf.nn.conv2d(net, k2, 1, "SAME"))
            logits = tf.matmul(tf.reshape(net, [-1, 4 * 4 * 32]), w) + b
        else:
            weights = [tf.compat.v1.Variable(v) for v in mlp_weights(64, seed=seed)]
            logits = dense_stack(images, weights)
        loss = classification_loss(logits, labels)
        train_op = make_optimizer().minimize(loss)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for _ in range(epochs):
                order = rng.permutation(len(y_all))
                for i in range(0, len(order), 64):
                    batch = order[i : i + 64]
                    sess.run(train_op, {images: x_all[batch], labels: y_all[batch]})
            return float(sess.run(loss, {images: x_all, labels: y_all}))


PROBLEMS = {
    "linear regression": lambda make, seed, quick: linear_regression(make, seed, quick),
    "digits MLP": lambda make, seed, quick: digits_model(make, seed, quick, cnn=False),
    "digits CNN": lambda make, seed, quick: digits_model(make, seed, quick, cnn=True),
}


def quality(quick):
    results = {}
    for problem, train in PROBLEMS.items():
        results[problem] = {}
        for name, make in quality_optimizers().items():
            losses = [train(make, seed, quick) for seed in range(3)]
            finite = [v if np.isfinite(v) else np.inf for v in losses]
            results[problem][name] = float(np.median(finite))
            print(f"  {problem:<18}{name:<22}{results[problem][name]:.4g}", flush=True)
    return results


# -- Reports -----------------------------------------------------------------


def best_of(results, prefix):
    rows = {k: v for k, v in results.items() if k.startswith(prefix)}
    name = min(rows, key=rows.get)
    return name, rows[name]


def _quartiles(row):
    return f"{row['ratio_q1']:.2f}-{row['ratio_q3']:.2f}"


def write_reports(out, output):
    os.makedirs(output, exist_ok=True)
    lines = [f"Measured on {out['machine']}.", ""]
    if "speed" in out:
        lines += [
            "### Cost per step (ratio to TensorFlow's optimizer, median and quartiles)",
            "",
            "| model | mode | pair | ratio | quartiles | baseline ms/step |",
            "| --- | --- | --- | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {r['model']} | {r['mode']} | {r['pair']} | {r['ratio']:.2f} | "
            f"{_quartiles(r)} | {r['baseline_ms']:.2f} |"
            for r in out["speed"]
        ]
        lines.append("")
    if "scaling" in out:
        lines += [
            "### Cost per step as the model grows (Session)",
            "",
            "| parameters | pair | ratio | quartiles | baseline ms/step |",
            "| ---: | --- | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {r['parameters']:,} | {r['pair']} | {r['ratio']:.2f} | "
            f"{_quartiles(r)} | {r['baseline_ms']:.2f} |"
            for r in out["scaling"]
        ]
        lines.append("")
        plot_scaling(out["scaling"], os.path.join(output, "scaling.png"))
    if "memory" in out:
        lines += [
            "### Optimizer state for the MLP (266,610 parameters), and graph build time",
            "",
            "| front end | optimizer | state bytes | build s |",
            "| --- | --- | ---: | ---: |",
        ]
        for r in out["memory"]:
            build = "" if r["build_s"] is None else f"{r['build_s']:.3f}"
            lines.append(
                f"| {r['front end']} | {r['optimizer']} | {r['state_bytes']:,} | {build} |"
            )
        lines.append("")
    if "quality" in out:
        lines += [
            "### Final training loss, median of 3 seeds (lower is better)",
            "",
            "| problem | L4Adam | L4Adam(0.25) | L4Mom | L4Mom(0.25) | best Adam | best momentum |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for problem, results in out["quality"].items():
            adam, mom = best_of(results, "Adam"), best_of(results, "momentum")
            lines.append(
                f"| {problem} | "
                + " | ".join(
                    f"{results[k]:.4g}"
                    for k in ("L4Adam", "L4Adam(0.25)", "L4Mom", "L4Mom(0.25)")
                )
                + f" | {adam[1]:.4g} ({adam[0].split('=')[1]}) | {mom[1]:.4g} ({mom[0].split('=')[1]}) |"
            )
        lines.append("")
        plot_quality(out["quality"], os.path.join(output, "quality.png"))
    with open(os.path.join(output, "results.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    with open(os.path.join(output, "results.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    print("\n".join(lines))


def plot_quality(quality, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(quality), figsize=(4.2 * len(quality), 4.2))
    for ax, (problem, results) in zip(np.atleast_1d(axes), quality.items()):
        for prefix, rates, color in (
            ("Adam", ADAM_RATES, "C3"),
            ("momentum", MOMENTUM_RATES, "C2"),
        ):
            values = [results[f"{prefix} lr={lr:g}"] for lr in rates]
            ax.plot(rates, values, "o--", color=color, label=f"{prefix} (grid)")
        for name, style in (
            ("L4Adam", "C0-"),
            ("L4Adam(0.25)", "C0:"),
            ("L4Mom", "C1-"),
            ("L4Mom(0.25)", "C1:"),
        ):
            ax.axhline(results[name], color=style[:2], linestyle=style[2:], label=name)
        ax.set(
            xscale="log",
            yscale="log",
            title=problem,
            xlabel="learning rate (baselines)",
            ylabel="final training loss",
        )
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scaling(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for pair in PAIRS:
        points = [(r["parameters"], r["ratio"]) for r in rows if r["pair"] == pair]
        ax.plot(*zip(*points), "o-", label=pair)
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set(
        xscale="log",
        xlabel="parameters",
        ylabel="time per step / baseline's",
        title="Cost per step in a Session",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and epochs")
    parser.add_argument(
        "--only",
        default="speed,memory,scaling,quality",
        help="comma-separated parts (default: all)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="TensorFlow's intra- and inter-op threads (default 1)",
    )
    parser.add_argument(
        "--output",
        default=os.path.join("benchmarks", "results"),
        help="folder for the tables and plots (default benchmarks/results)",
    )
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - {"speed", "memory", "scaling", "quality"}
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}")
    set_threads(args.threads)
    out = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU "
        f"cores ({args.threads} thread{'s' if args.threads > 1 else ''}), "
        f"TensorFlow {tf.__version__}, Python {platform.python_version()}",
        "quick": args.quick,
        "threads": args.threads,
    }
    for part in parts:
        print(f"{part}:", flush=True)
        out[part] = {"speed": speed, "scaling": scaling, "quality": quality}.get(
            part, lambda quick: memory()
        )(args.quick)
    write_reports(out, args.output)


if __name__ == "__main__":
    main()

"""Smoke tests of legacy_examples/: each runs offline, briefly, and does what it says."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

EXAMPLES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "legacy_examples"
)
pytestmark = pytest.mark.subprocess


def run_example(name, *args):
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, name), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_main_example_trains_every_optimizer_and_plots(tmp_path):
    out = run_example("mnist_mlp.py", "--epochs", "2", "--output", str(tmp_path))
    rows = dict(
        re.findall(r"^(\S+)\s+([0-9.e+-]+)\s+[0-9.]+\s+[0-9.]+$", out, flags=re.M)
    )
    assert set(rows) == {
        "L4Adam(0.25)",
        "L4Adam",
        "L4Mom(0.25)",
        "Adam",
        "MomentumSGD",
        "SGD",
    }
    assert float(rows["L4Adam(0.25)"]) < 1.0  # from log(10) = 2.3 at the start
    with open(tmp_path / "mnist_mlp_losses.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_main_example_reads_a_local_mnist_npz(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "mnist.npz",
        x_train=rng.integers(0, 256, (128, 28, 28), dtype=np.uint8),
        y_train=rng.integers(0, 10, 128, dtype=np.uint8),
        x_test=rng.integers(0, 256, (32, 28, 28), dtype=np.uint8),
        y_test=rng.integers(0, 10, 32, dtype=np.uint8),
    )
    out = run_example(
        "mnist_mlp.py",
        "--epochs",
        "1",
        "--optimizers",
        "L4Adam,Adam",
        "--mnist",
        str(tmp_path / "mnist.npz"),
        "--output",
        str(tmp_path),
    )
    assert "128 training and 32 test images of 784 pixels" in out


def test_main_example_rejects_unknown_optimizers():
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(EXAMPLES, "mnist_mlp.py"),
            "--optimizers",
            "L4Adam,Lion",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "unknown optimizers ['Lion']" in result.stderr


def test_migration_example_gives_the_same_numbers():
    out = run_example("migrate_to_tf2.py", "--epochs", "1")
    differences = re.findall(
        r"^(TF1 Session|TF2 custom loop|Keras model\.fit)\s+([0-9.]+)\s+"
        r"([0-9.e+-]+)$",
        out,
        flags=re.M,
    )
    assert len(differences) == 3, out
    assert all(float(d) < 1e-4 for _, _, d in differences), out


def test_slim_example_trains_and_writes_l4_summaries(tmp_path):
    out = run_example("slim_cnn.py", "--steps", "40", "--logdir", str(tmp_path))
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", out).group(1))
    assert accuracy > 0.5, out
    assert "L4Adam/effective_learning_rate" in out and "L4Adam/min_loss_estimate" in out


@pytest.mark.keras3  # the benchmarks' Keras rows use Keras 3's API
def test_benchmarks_run_and_write_their_report(tmp_path):
    script = os.path.join(os.path.dirname(EXAMPLES), "benchmarks", "run.py")
    result = subprocess.run(
        [
            sys.executable,
            script,
            "--quick",
            "--only",
            "memory",
            "--output",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = (tmp_path / "results.md").read_text()
    state = dict(
        re.findall(r"^\| tf\.compat\.v1 \| (\w+) \| ([0-9,]+) \|", report, flags=re.M)
    )
    # Equal EMAs kept once: L4Adam's state is Adam's plus four scalars, L4Mom's momentum's.
    adam, l4adam = (int(state[k].replace(",", "")) for k in ("AdamOptimizer", "L4Adam"))
    mom, l4mom = (
        int(state[k].replace(",", "")) for k in ("MomentumOptimizer", "L4Mom")
    )
    assert 0 < l4adam - adam <= 64 and 0 < l4mom - mom <= 64, report

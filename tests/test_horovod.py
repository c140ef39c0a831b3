"""Horovod: every rank takes the step one process takes on the whole batch.

Runs legacy_examples/horovod_digits.py (the README's example) under
``horovodrun -np 2 --gloo`` on this machine, in its Session and TF2 forms,
against the same script in one process. Horovod is built by the `horovod` tox
environment (tests/install_horovod.sh); elsewhere these tests are skipped.
"""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip(
    "horovod.tensorflow",
    reason="Horovod is not installed here; `tox -e horovod` builds it",
)

EXAMPLE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "legacy_examples",
    "horovod_digits.py",
)
HOROVODRUN = os.path.join(os.path.dirname(sys.executable), "horovodrun")
TIMEOUT_S = 300


def run(launcher, flags, out_dir):
    """Runs the example with ``launcher`` in a process group of its own,
    ended whatever happens."""
    process = subprocess.Popen(
        [*launcher, sys.executable, EXAMPLE, *flags, "--save", str(out_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    try:
        output = process.communicate(timeout=TIMEOUT_S)[0]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, output[-4000:]


def weights(path):
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def two_ranks(tmp_path, *flags):
    run([HOROVODRUN, "-np", "2", "-H", "localhost:2", "--gloo"], flags, tmp_path)
    return weights(tmp_path / "rank0.npz"), weights(tmp_path / "rank1.npz")


@pytest.mark.subprocess
@pytest.mark.parametrize("flags", [[], ["--tf2"]], ids=["session", "tf2"])
def test_two_ranks_follow_one_process_on_the_whole_batch(flags, tmp_path):
    first, second = two_ranks(tmp_path, *flags)
    (tmp_path / "one").mkdir()
    run([], flags, tmp_path / "one")
    one = weights(tmp_path / "one" / "rank0.npz")
    for a, b, c in zip(first, second, one):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)


@pytest.mark.subprocess
def test_without_reduce_loss_the_ranks_drift_apart(tmp_path):
    # What the README warns of: each rank sets its stepsize from its own loss.
    first, second = two_ranks(tmp_path, "--local-loss")
    assert max(np.abs(a - b).max() for a, b in zip(first, second)) > 1e-3

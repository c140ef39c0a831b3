"""Interrupt and resume: a run restored in a new process ends as the uninterrupted one."""

import os
import subprocess
import sys

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resume_worker.py")


@pytest.mark.subprocess
@pytest.mark.parametrize("front", ["saver", "checkpoint", "keras"])
def test_resume_in_a_new_process(front, tmp_path):
    for phase in ("first", "second"):
        result = subprocess.run(
            [sys.executable, WORKER, front, phase, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    whole, resumed = (np.load(tmp_path / name) for name in ("whole.npz", "resumed.npz"))
    assert len(whole.files) == len(resumed.files) == 2
    for key in whole.files:
        np.testing.assert_allclose(resumed[key], whole[key], rtol=1e-6, atol=1e-7)

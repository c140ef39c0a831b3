"""Every ```python block of the README runs as written (```py blocks are fragments)."""

import os
import re
import subprocess
import sys

import pytest

README = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md"
)
with open(README, encoding="utf-8") as f:
    BLOCKS = re.findall(r"^```python\n(.*?)^```", f.read(), flags=re.S | re.M)


def test_the_readme_has_runnable_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.subprocess
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, tmp_path):
    # Each block in its own process: the TF1 one disables v2 behaviour.
    result = subprocess.run(
        [sys.executable, "-c", BLOCKS[index]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"loss", result.stdout), result.stdout

"""The installed package: layout, dependencies, and the README's main example."""

import importlib.metadata
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TENSORFLOW_BUILDS = {
    "tensorflow",
    "tensorflow-cpu",
    "tensorflow-gpu",
    "tensorflow-intel",
    "tensorflow-macos",
    "tf-nightly",
    "tf-nightly-cpu",
}


def test_one_tensorflow_build_is_installed():
    names = {
        dist.metadata["Name"].lower().replace("_", "-")
        for dist in importlib.metadata.distributions()
    }
    assert len(names & TENSORFLOW_BUILDS) == 1, names & TENSORFLOW_BUILDS


def test_compat_is_a_subpackage_only():
    # The spec, not the module: on a TensorFlow with Keras 2 it refuses to load.
    spec = importlib.util.find_spec("L4.compat")
    assert os.path.basename(os.path.dirname(spec.origin)) == "compat"
    if os.environ.get("L4_TEST_INSTALLED"):
        assert importlib.util.find_spec("compat") is None, (
            "a top-level `compat` is importable"
        )
        files = importlib.metadata.files("L4-optimizer")
        top_levels = {f.parts[0] for f in files if f.suffix == ".py"}
        assert top_levels == {"L4"}, top_levels


def test_readme_starts_with_the_two_set_up_commands():
    """.ci/run runs the second line of the README's first code block."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        block = f.read().split("```")[1].strip().splitlines()
    assert block == [
        "bash",
        'python -m pip install ".[cpu,examples]" && python legacy_examples/mnist_mlp.py',
        "python -m pip install tox tox-uv && python -m tox",
    ]


@pytest.mark.subprocess
def test_importing_l4_imports_no_keras():
    code = (
        "import sys, tensorflow\n"
        "def keras(): return {m for m in sys.modules if m.split('.')[0] in "
        "('keras', 'tf_keras')}\n"
        "before = keras()\n"
        "import L4\n"
        "print(sorted(keras() - before))\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout

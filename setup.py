"""Packaging for L4: the `L4` package, with `compat/` installed as `L4.compat`.

TensorFlow comes in several builds (`tensorflow`, `tensorflow-cpu`, ...) that
must not be installed side by side, so it is an extra rather than a hard
requirement: `pip install ".[cpu]"` for CPU-only machines, `pip install
".[gpu]"` for NVIDIA GPUs, or plain `pip install .` next to a TensorFlow you
already have. Tested: TensorFlow 2.12, 2.15, 2.16 and 2.21 (the tf.compat.v1
optimizers), `L4.compat` with Keras 2 (2.12, 2.15, tf_keras on 2.21) and Keras 3
(2.16, 2.21); Python 3.10 to 3.12 as each release allows; see the README's
"Supported versions" and tox.ini.
"""

from setuptools import setup

TENSORFLOW = ">=2.12,<2.22"

setup(
    name="L4-optimizer",
    version="1.3.0",
    description="L4 loss-based stepsize adaptation for TensorFlow 2 (tf.compat.v1, Keras 2 and Keras 3)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=["L4", "L4.compat"],
    package_dir={"L4": "L4", "L4.compat": "compat"},
    python_requires=">=3.10",
    install_requires=["numpy"],
    extras_require={
        "cpu": [f"tensorflow-cpu{TENSORFLOW}"],
        "gpu": [f"tensorflow[and-cuda]{TENSORFLOW}"],
        "slim": ["tf-slim>=1.1"],
        "examples": ["scikit-learn", "matplotlib", "tf-slim>=1.1"],
        "test": ["pytest>=7", "pytest-xdist", "hypothesis", "tf-slim>=1.1", "scikit-learn", "matplotlib"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)

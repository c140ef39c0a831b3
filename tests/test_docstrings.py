"""The examples in the docstrings run."""

import doctest
import sys

import pytest

import L4.compat
import L4.optimizers

# The Keras front end TensorFlow's Keras chose: L4.compat.optimizers (Keras 3)
# or L4.compat.keras2.
KERAS_FRONT_END = sys.modules[L4.compat.L4Adam.__module__]


@pytest.mark.eager
@pytest.mark.parametrize(
    "module", [L4.optimizers, KERAS_FRONT_END], ids=lambda m: m.__name__
)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result

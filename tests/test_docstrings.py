"""The examples in the docstrings run."""

import doctest

import pytest

import L4.compat.optimizers
import L4.optimizers


@pytest.mark.eager
@pytest.mark.parametrize(
    "module", [L4.optimizers, L4.compat.optimizers], ids=lambda m: m.__name__
)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result

"""Training tests run on one thread: the same float reduction order in every run they compare."""

import pytest

from tests.train.helpers import one_thread


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def one_thread():
    """One torch/OpenMP thread for a test: tiny networks run faster on a shared 2-core machine
    (the CPU kernels' backward is deterministic for any thread count)."""
    yield from _single_thread()


@pytest.fixture(scope="module")
def one_thread_module():
    """:func:`one_thread` for a whole module (so that module-scoped fixtures use it too)."""
    yield from _single_thread()

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Two torch threads on a shared 2-core box spin against other processes (10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

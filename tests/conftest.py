import os

import pytest
import torch

# The test-only protocol, registered for this process and every party process it starts.
os.environ["CONFIDANT_PROTOCOLS"] = "pingpong=tests.pingpong"


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Two torch threads on a shared 2-core box spin against other processes (10x slower).
    Protocols never set torch's thread count (process-wide state): the runner does."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

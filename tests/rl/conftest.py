import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model gains nothing from threads, and on a busy shared machine oversubscribed
    OpenMP threads make each forward pass many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

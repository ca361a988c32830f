import pytest


@pytest.fixture(autouse=True)
def one_torch_thread(monkeypatch):
    """Tiny models gain nothing from a second thread, and on a busy machine an OpenMP
    barrier waiting for a descheduled thread makes each op milliseconds long. The recipe's
    num_threads = 0 follows OMP_NUM_THREADS."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

import os

import torch

# The Triton interpreter must be switched on before any kernel is decorated; on a GPU the real compiler runs.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fault():
    """make(*behaviours) -> a fake OpenAI-compatible endpoint on 127.0.0.1 with those faults (tests/fault_server.py);
    every server made is closed after the test."""
    from fault_server import fault_servers

    yield from fault_servers()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run several times faster on one thread than on two contended ones (modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

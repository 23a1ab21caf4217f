import os
import sys
import tempfile

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")

# Measurements of the machine (the tuned CPU network chunk) go to a folder of this test session, not the
# user's cache.
os.environ["NERF_CACHE_DIR"] = tempfile.mkdtemp(prefix="nerf-test-cache-")

# The tests use tiny networks, for which thread start-up costs more than it saves (and a busy machine
# makes extra threads much slower).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _glibc_defaults(monkeypatch):
    """Keep glibc's malloc defaults in the test process: runtime.keep_cpu_memory is process-wide and not
    undone, and with it pycolmap's reconstruction in the same process failed now and then (test_imgs2poses).
    test_runtime checks the setting itself, in child processes and through its internals."""
    from nerf import runtime
    monkeypatch.setattr(runtime, "keep_freed_cpu_memory", lambda: False)
    yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def shared_path(*parts):
    """Path under ../shared/data, or skip the test when the benchmark data is absent."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"benchmark data not present: {path}")
    return path

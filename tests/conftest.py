import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pytest
import torch

# One thread: the suite is small-batch work, and deterministic timing matters more than speed.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_cleanup():
    torch.manual_seed(0)
    yield
    from helpers import stop_started_engines

    stop_started_engines()

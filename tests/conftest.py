import os

import pytest
import torch

# Two cores on the reference machine: one intra-op thread keeps tests predictable.
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

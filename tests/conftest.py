import pytest
import torch

from dmmd.config import ModelConfig
from dmmd.methods.discriminator import build_discriminator


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    # Two OpenMP threads on a 2-core CI machine spin against pytest itself; one is faster here.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def small_disc(kernel="linear", objective="mmd", in_dim=2, dtype=torch.float64, seed=0, feature_dim=5):
    torch.manual_seed(seed)
    cfg = ModelConfig(width=8, depth=2, feature_dim=feature_dim, time_dim=8, kernel=kernel, objective=objective,
                      init_width=1.5)
    return build_discriminator(cfg, (in_dim,)).to(dtype)

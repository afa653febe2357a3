import os

# One thread: the planted-case models are tiny (a second thread buys little), and results then do
# not depend on the core count through the order of float reductions, so a test repeats anywhere.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the project, or skip (a user's machine does not have it)."""
    if not SHARED.exists():
        pytest.skip("../shared/data is not present")
    return SHARED


@pytest.fixture(scope="session")
def cifar10_root(shared_data: Path) -> Path:
    root = shared_data / "cifar10"
    if not (root / "cifar10-jpeg.zip").exists():
        pytest.skip("CIFAR-10 JPEG copy not present")
    return root


@pytest.fixture
def digits_train():
    from sslguard.data import load_digits_dataset

    return load_digits_dataset("train")


@pytest.fixture
def rng():
    return np.random.default_rng(0)

"""Shared fixtures."""
import pytest
import torch


@pytest.fixture
def float64():
    """Every tensor of the test in float64; the default dtype is restored afterwards."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)

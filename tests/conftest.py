import pytest
import torch


@pytest.fixture(autouse=True)
def restore_distribution_validation():
    """torch.compile (Dynamo) and train.py switch torch.distributions' argument checks off process-wide;
    each test starts with the setting it had, so one test never changes what another checks."""
    validate = torch.distributions.Distribution._validate_args
    yield
    torch.distributions.Distribution.set_default_validate_args(validate)

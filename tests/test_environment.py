import os

import torch


def test_ci_uses_the_cpu_torch_build():
    # A CUDA torch sneaking into CI means gigabytes of downloads: fail loudly instead.
    if os.environ.get("CI"):
        assert torch.version.cuda is None, f"CI installed a CUDA torch build: {torch.__version__}"


def test_hub_is_offline_in_tests():
    assert os.environ["HF_HUB_OFFLINE"] == "1"

import os

import pytest
import torch

# Tests are small; one thread avoids oversubscribing the 2-core CI machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_qat_ckpt(tmp_path_factory):
    """A 4-bit qat cnn trained briefly on an MNIST slice (shared by CLI tests)."""
    from typer.testing import CliRunner

    from mbq.cli.app import app

    out = tmp_path_factory.mktemp("ckpt") / "qat.safetensors"
    res = CliRunner().invoke(app, ["train", "--method", "qat", "--bits", "4", "--arch", "cnn", "--no-health-check",
                                   "--train-subset", "512", "--val-size", "100", "--epochs", "1",
                                   "--out", str(out), "--quiet", "--json", "--seed", "1"])
    assert res.exit_code == 0, res.output
    return out

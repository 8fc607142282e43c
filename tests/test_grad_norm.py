"""The per-epoch gradient-norm diagnostics of a capped run (the metrics log)."""
import json

import torch
from typer.testing import CliRunner

from mbq.cli.app import app
from mbq.core.engine import _grad_norm_metrics


def test_grad_norm_metrics_median_and_clipped_fraction():
    norms = [torch.tensor(v) for v in (1.0, 2.0, 3.0, float("inf"))]
    assert _grad_norm_metrics(norms, 2.5) == {"grad_norm": 2.0, "clipped": 0.5}
    assert _grad_norm_metrics(norms, None) == {}
    assert _grad_norm_metrics([], 2.0) == {}


def test_capped_runs_log_the_gradient_norm_uncapped_do_not(tiny_qat_ckpt, tmp_path):
    m = json.loads(tiny_qat_ckpt.with_name("qat.metrics.jsonl").read_text().splitlines()[-1])
    assert m["grad_norm"] > 0 and 0.0 <= m["clipped"] <= 1.0  # qat caps at 2 by default
    out = tmp_path / "f.safetensors"
    for clip, expect in (("0", None), ("1e-6", 1.0)):
        res = CliRunner().invoke(app, ["train", "--method", "fp", "--arch", "cnn", "--train-subset", "256",
                                       "--val-size", "0", "--epochs", "1", "--grad-clip", clip,
                                       "--no-health-check", "--out", str(out), "--quiet", "--json"])
        assert res.exit_code == 0, res.output
        m = json.loads(out.with_name("f.metrics.jsonl").read_text().splitlines()[-1])
        assert m.get("clipped") == expect

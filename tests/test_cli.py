"""End-to-end CLI behaviour of train / eval / info (tiny runs on an MNIST slice)."""
import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import save_file
from typer.testing import CliRunner

from mbq.cli.app import app
from mbq.core.checkpoint import read_checkpoint

runner = CliRunner()
TINY = ["--no-health-check", "--arch", "cnn", "--train-subset", "256", "--val-size", "64", "--epochs", "1", "--quiet"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_train_eval_info_roundtrip(tiny_qat_ckpt):
    tensors, meta = read_checkpoint(tiny_qat_ckpt)
    assert meta["mbq.method"] == "qat" and meta["mbq.bits"] == [4]
    assert meta["mbq.dataset"]["name"] == "mnist"
    assert meta["mbq.config"]["method"] == "qat"
    assert "4" in meta["mbq.metrics"]["top1"]
    for suffix in (".state.pt", ".metrics.jsonl", ".config.json"):
        assert tiny_qat_ckpt.with_name("qat" + suffix).exists()
    r = run("eval", tiny_qat_ckpt, "--bit", "4", "--json", "--limit", "500")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["w"] == 4 and doc["a"] == 4 and 0 <= doc["top1"] <= 100 and doc["n"] == 500
    r = run("eval", tiny_qat_ckpt, "--bits", "2,4,8", "--json", "--limit", "200")
    rows = json.loads(r.stdout)["results"]
    assert [x["w"] for x in rows] == [2, 4, 8]
    r = run("info", tiny_qat_ckpt, "--json")
    info = json.loads(r.stdout)
    assert info["method"] == "qat" and info["compression"] > 1
    assert any(l["w"] == 4 for l in info["layers"])


def test_eval_default_matches_recorded_metric(tiny_qat_ckpt):
    _, meta = read_checkpoint(tiny_qat_ckpt)
    doc = json.loads(run("eval", tiny_qat_ckpt, "--json").stdout)
    assert doc["top1"] == pytest.approx(meta["mbq.metrics"]["top1"]["4"])


def test_eval_table_and_all(tiny_qat_ckpt):
    r = run("eval", tiny_qat_ckpt, "--bits", "all", "--limit", "100")
    assert r.exit_code == 0
    assert "top-1" in r.stdout and "fp" in r.stdout


def test_subprocess_train_and_eval_pipeline(tmp_path):
    out = tmp_path / "fp.safetensors"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    p = subprocess.run([sys.executable, "-m", "mbq", "train", "--method", "fp", *TINY, "--out", str(out),
                        "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["top1"]["fp"] >= 0  # stdout is one JSON document
    p = subprocess.run([sys.executable, "-m", "mbq", "eval", str(out), "--json", "--limit", "100"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0 and json.loads(p.stdout)["top1"] >= 0


def test_resume_continues(tmp_path):
    out = tmp_path / "r.safetensors"
    assert run("train", "--method", "qat", *TINY, "--out", out).exit_code == 0
    r = run("train", "--method", "qat", *TINY[:-3], "--epochs", "2", "--quiet", "--out", out, "--resume")
    assert r.exit_code == 0, r.output
    lines = out.with_name("r.metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1, 2]


def test_nan_stops_and_keeps_last_checkpoint(tmp_path):
    out = tmp_path / "n.safetensors"
    assert run("train", "--method", "fp", *TINY, "--out", out).exit_code == 0
    before = out.read_bytes()
    r = run("train", "--method", "fp", *TINY, "--out", out, "--lr", "1e30")
    assert r.exit_code == 1
    assert "loss became" in r.output
    assert out.read_bytes() == before
    read_checkpoint(out)


def test_config_file_defaults_and_flag_override(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('method = "qat"\nbits = "8"\narch = "cnn"\ntrain_subset = 256\nval_size = 64\n'
                   'epochs = 1\n')
    out = tmp_path / "c.safetensors"
    r = run("train", "--config", cfg, "--bits", "2", "--out", out, "--quiet", "--no-health-check")
    assert r.exit_code == 0, r.output
    _, meta = read_checkpoint(out)
    assert meta["mbq.bits"] == [2] and meta["mbq.config"]["data"]["train_subset"] == 256
    assert out.with_name("c.config.json").exists()
    ycfg = tmp_path / "c.yaml"
    ycfg.write_text("method: fp\nlr: -1\n")
    r = run("train", "--config", ycfg, "--out", out)
    assert r.exit_code == 2 and "lr" in r.output


# --- bad input: one line, exit 2 -----------------------------------------------------------

def _one_line_error(r, *needles):
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert "Traceback" not in r.output
    for n in needles:
        assert n in r.output, r.output


@pytest.mark.parametrize("args,needle", [
    (["--method", "nope"], "unknown method"),
    (["--arch", "nope"], "nope"),
    (["--data", "nope"], "nope"),
    (["--bits", "9"], "not supported"),
    (["--bits", "2,x"], "not a bit-width"),
    (["--bits", ""], "bit-width"),
    (["--bits", "2,4"], "one width"),
    (["--method", "qat", "--act-bits", "12"], "not supported"),
    (["--data", "cifar10"], "--data-dir"),
    (["--coreset-fractionx", "0.2"], "no such option"),
    (["--lr", "-1"], "lr"),
    (["--out", "x.pt"], ".safetensors"),
])
def test_train_bad_input(tmp_path, args, needle):
    r = run("train", "--out", tmp_path / "m.safetensors", *args)
    if args == ["--out", "x.pt"]:
        r = run("train", *args)
    _one_line_error(r, needle)


def test_download_without_network_says_so(tmp_path):
    r = run("train", "--data", "cifar10", "--data-dir", tmp_path, "--download", "--out",
            tmp_path / "m.safetensors")
    _one_line_error(r, "network")


def test_resume_without_checkpoint(tmp_path):
    _one_line_error(run("train", "--resume", "--out", tmp_path / "none.safetensors"), "--resume")


def test_eval_bad_files(tmp_path, tiny_qat_ckpt):
    _one_line_error(run("eval", tmp_path / "missing.safetensors"), "no such file")
    _one_line_error(run("eval", tmp_path), "folder")
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(tiny_qat_ckpt.read_bytes()[:5000])
    _one_line_error(run("eval", trunc), "truncated or corrupt")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(3000))
    _one_line_error(run("eval", junk), "corrupt")
    import torch
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(plain))
    _one_line_error(run("eval", plain), "without mbq metadata")
    tensors, meta = read_checkpoint(tiny_qat_ckpt)
    from mbq.core.checkpoint import encode_metadata
    raw = encode_metadata({k: v for k, v in meta.items() if k not in ("mbq.format", "mbq.format_version",
                                                                       "mbq.version", "mbq.created")})
    raw["mbq.config"] = raw["mbq.config"].replace('"arch": "cnn"', '"arch": "resnet20"')
    raw["mbq.arch"] = "resnet20"
    wrong = tmp_path / "wrong.safetensors"
    save_file(tensors, str(wrong), metadata=raw)
    _one_line_error(run("eval", wrong), "do not fit")


@pytest.mark.parametrize("args,needle", [
    (["--bit", "9"], "not supported"),
    (["--bits", "2,,4"], "bit-width"),
    (["--bits", "3,3"], "twice"),
    (["--bit", "4", "--bits", "2"], "not several"),
    (["--wbits", "4"], "go together"),
])
def test_eval_bad_bits(tiny_qat_ckpt, args, needle):
    _one_line_error(run("eval", tiny_qat_ckpt, *args), needle)


def test_help_does_not_import_torch():
    code = ("import sys; from mbq.cli.app import app; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(app, ['train', '--help']); assert r.exit_code == 0, r.output; "
            "assert 'Method options' in r.output; print('torch' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "False"
    p = subprocess.run([sys.executable, "-m", "mbq", "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "train" in p.stdout


def test_cli_reference_doc_is_current():
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parents[1] / "tools" / "gen_cli_md.py"
    res = subprocess.run([sys.executable, str(tool), "--check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_threads_sets_this_process_thread_count_and_refuses_zero():
    import torch

    before = torch.get_num_threads()
    saved = os.environ.get("OMP_NUM_THREADS")
    try:
        r = runner.invoke(app, ["--threads", "1", "info", "--help"])
        assert r.exit_code == 0, r.output
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    r = runner.invoke(app, ["--threads", "0", "info", "--help"])
    assert r.exit_code == 2 and "--threads" in r.output

"""Engine behaviour that needs real processes: torchrun DDP and interruption."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from mbq.core.checkpoint import read_checkpoint

TINY = ["--no-health-check", "--arch", "cnn", "--train-subset", "512", "--val-size", "64", "--device", "cpu"]


def test_torchrun_two_processes_gloo(tmp_path):
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not on PATH")
    import socket
    with socket.socket() as sock:  # a free port: --master_port=0 is not portable across torch versions
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "ddp.safetensors"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    p = subprocess.run([torchrun, "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "mbq", "train",
                        "--method", "qat", "--bits", "4", *TINY, "--epochs", "1", "--out", str(out),
                        "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads(p.stdout)  # rank 0 alone prints: one JSON document
    assert doc["method"] == "qat"
    assert p.stderr.count("saved ") == 1
    _, meta = read_checkpoint(out)
    assert meta["mbq.bits"] == [4]


def test_sigint_and_kill_leave_a_readable_checkpoint(tmp_path):
    out = tmp_path / "int.safetensors"
    cmd = [sys.executable, "-m", "mbq", "train", "--method", "fp", *TINY, "--epochs", "200",
           "--out", str(out), "--quiet"]
    # a shell's background job starts with SIGINT ignored, and Python keeps it so: restore it
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while not out.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert out.exists(), "no checkpoint appeared"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)  # generous: a loaded CI machine
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    _, meta = read_checkpoint(out)
    assert meta["mbq.method"] == "fp"
    # A hard kill mid-run: whatever it was doing, the checkpoint on disk still reads.
    proc = subprocess.Popen(cmd[:-1] + ["--resume", "--quiet"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"))
    time.sleep(4)
    proc.kill()
    proc.wait(timeout=30)
    read_checkpoint(out)

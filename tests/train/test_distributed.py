"""`accelerate launch --multi_gpu --num_processes 2` with `--device cpu` runs the trainer data-parallel.

(`accelerate launch --cpu` starts one process unless MPI is set up; --multi_gpu uses torchrun, and the
trainer's `--device cpu` makes accelerate pick the gloo backend.)
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from sd_softprompt.files.softprompt import SoftPrompt

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes(tmp_path, tiny_dirs):
    out = tmp_path / "ddp.safetensors"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--multi_gpu",
        "--main_process_port",
        str(free_port()),
        "-m",
        "sd_softprompt.cli",
        "train",
        "--model",
        tiny_dirs("sd1"),
        "--mode",
        "text",
        "--target",
        "image of serene landscape at sunrise",
        "--vectors",
        "2",
        "--steps",
        "6",
        "--batch-size",
        "2",
        "--probe-size",
        "64",
        "--eval-samples",
        "2",
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
    ]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.with_name("ddp.report.json").read_text())
    assert report["processes"] == 2 and len(report["losses"]) == 6
    assert report["process_vector_spread"] == 0.0  # both processes end with the very same vectors
    assert SoftPrompt.load(out).metadata["steps"] == "6"

"""Test settings, in one place. The Triton interpreter must be switched on before any kernel module
is imported, so that kernel parity tests run on a CPU. Everything else runs the PyTorch reference
path by default (the interpreter is far too slow for whole models); kernel tests opt in with
`kernels.enabled(True)`.

Tests that train in a subprocess, run DDP, compile kernels or run the kernel tile sweep are marked `slow`:

    python -m pytest -q tests                    # everything (what the README runs)
    python -m pytest -q tests -m "not slow"      # the fast subset, for a quick check while reading
"""
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import kernels  # noqa: E402

THREADS = max(1, min(2, os.cpu_count() or 1))   # torch threads of the test process and of scripts it starts

# The small setting of the model tests (seconds on a CPU): 40 ROIs in 4 networks, a D 32 depth-1 encoder
SMALL_MAP = np.repeat(np.arange(4), 10)
TINY = dict(dim=32, depth=1, heads=2, proj_hidden=64)                  # TrainConfig fields
TINY_RUN = [*(a for k, v in TINY.items() for a in (f"--{k.replace('_', '-')}", str(v))),   # the same, as train.py
            "--batch-size", "8", "--no-kernels", "--log-every", "1", "--eval-scans", "0"]  # flags, and a batch of 8


def use_test_settings(threads=THREADS):
    """The in-process settings: the PyTorch reference paths (kernels off) and `threads` torch
    threads. Applied below to the pytest process; a spawned worker (it does not load this file
    through pytest) calls it itself."""
    kernels.set_enabled(False)
    torch.set_num_threads(threads)


def script_env(threads=THREADS):
    """The environment for a script the tests run as a subprocess: `threads` OpenMP threads (the
    child does not inherit torch.set_num_threads) and no TRITON_INTERPRET, so that the script
    chooses its kernel path as a user's run would (bench/gpu_check.py --dry-run sets it itself)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains in a subprocess, runs DDP or compiles kernels "
                                       "(deselect with -m 'not slow')")


use_test_settings()

"""Test setup. The Triton interpreter must be switched on before any kernel module is imported,
so that kernel parity tests run on a CPU. Everything else runs the PyTorch reference path by
default (the interpreter is far too slow for whole models); kernel tests opt in with
`kernels.enabled(True)`."""
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import kernels  # noqa: E402

kernels.set_enabled(False)
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

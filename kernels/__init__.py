"""Triton kernels for the two hot paths of Brain-Semantoks, and the one place that picks them.

- `tokenizer_conv.py`: all N per-network tokenizer convolutions in one launch, with the GELU and
  the time mean fused (SPEC §3).
- `coding_rate.py`: the statistics of the MCR loss (SPEC §7) in one pass over the batch.

Each kernel sits beside a plain-PyTorch reference, which is the ground truth. This package is a
leaf: it imports nothing of the model. The model calls `use_triton(tensor)` and nothing else
decides which path runs:

    CUDA tensor, or TRITON_INTERPRET=1 (CPU interpreter)  ->  Triton
    anything else, or kernels disabled (--no-kernels)      ->  PyTorch reference
"""
import contextlib
import logging
import os

import torch

log = logging.getLogger("brain_semantoks.kernels")

_enabled = True          # flipped by train.py --no-kernels, and by tests
_announced = set()       # which paths have been logged already


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


_HAVE_TRITON = _triton_importable()


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def set_enabled(flag: bool) -> None:
    """Allow (True) or forbid (False) the Triton path everywhere."""
    global _enabled
    _enabled = bool(flag)


@contextlib.contextmanager
def enabled(flag: bool):
    """Temporarily allow or forbid the Triton path (tests, A/B benchmarks)."""
    global _enabled
    before, _enabled = _enabled, bool(flag)
    try:
        yield
    finally:
        _enabled = before


def use_triton(t: torch.Tensor) -> bool:
    """The dispatch: True when `t` should go through a Triton kernel. Logs once per path."""
    triton_path = _enabled and _HAVE_TRITON and (t.is_cuda or interpreter_on())
    path = "triton" + (" (interpreter)" if triton_path and not t.is_cuda else "") if triton_path else "pytorch"
    if path not in _announced:
        _announced.add(path)
        why = "" if triton_path else (" (kernels disabled)" if not _enabled else
                                      " (triton not installed)" if not _HAVE_TRITON else " (no CUDA tensor)")
        log.info("kernels: using the %s path%s", path, why)
    return triton_path


@torch.compiler.disable
def _eager(fn, *args, **kwargs):
    """Run a kernel launcher outside torch.compile's graph: a graph break, by choice. Dynamo would
    otherwise trace into the autograd.Function and the launch-time Python (tile choice, grids, the
    interpreter on CPU), which it cannot always follow; as a break, the kernel runs exactly as in
    eager mode and the compiled graphs around it stay the same for the kernel and the reference
    path. Whether a torch.library custom op (no break) is faster is for a GPU run to measure."""
    return fn(*args, **kwargs)


def grouped_conv_gelu_mean(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                           offsets: tuple, patch_len: int) -> torch.Tensor:
    """All N per-network tokenizer convs + GELU + time mean (see tokenizer_conv.py for the math).

    x (B, C, T') ROIs sorted by network, weight (C, K, D), bias (N, D) -> (B, N, P, D)."""
    from . import tokenizer_conv
    if use_triton(x):
        return _eager(tokenizer_conv.grouped_conv_gelu_mean_triton, x, weight, bias, offsets, patch_len)
    return tokenizer_conv.grouped_conv_gelu_mean_reference(x, weight, bias, offsets, patch_len)


def mcr_loss(student_views, teacher_views, eps: float = 0.05):
    """The MCR loss (SPEC §7) through the Triton kernel of coding_rate.py -> (loss, comp, expa).

    No dispatch here: `losses.mcr_loss` asks `use_triton` and holds the PyTorch reference (this
    package imports nothing of the model)."""
    from .coding_rate import mcr_loss_triton
    return _eager(mcr_loss_triton, student_views, teacher_views, eps)

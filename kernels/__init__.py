"""Fast paths for the two hot ops of Brain-Semantoks, and the one place that picks them.

The paper's form of each op is written where a reader meets it: the tokenizer in tokenizer.py
(SPEC §3), the MCR loss in losses.py (SPEC §7). This package holds faster ways to compute the
same numbers, each tested for parity with that reference (tests/test_tokenizer.py: every tokenizer
path; tests/test_kernels.py: the Triton kernels, skipped where triton is not installed):

- `factored.py`: the tokenizer with its branches as GEMMs over all time points (PyTorch; the CPU path);
- `composed.py`: the tokenizer as one ragged conv per network (PyTorch; the reference of the kernel);
- `tokenizer_conv.py`: that ragged conv + GELU + time mean fused in Triton;
- `fused_tokenizer.py` (+ `_fwd.py`, `_bwd.py`): the factored form fused in Triton (both branches, the depthwise
  conv on the fly, GELU, time mean), forward and backward;
- `coding_rate.py`: the MCR loss with its batch reduction in Triton;
- `checks.py`: the input checks every path of an op shares.

The package is a leaf: it imports nothing of the model, and its functions take tensors. Triton is
imported only when a Triton path runs, so everything else works where triton is not installed.
One function per op says which path runs (`tokenizer_path`, `mcr_path`), by the mode train.py's
`--kernels` sets (`set_mode`; one of KERNEL_MODES):

    mode      tokenizer                                 MCR loss
    auto      CUDA: CUDA_DEFAULT, by measurement        CUDA: CUDA_DEFAULT, by measurement
              TRITON_INTERPRET=1: triton (tests)        TRITON_INTERPRET=1: triton (tests)
              otherwise: factored                       otherwise: reference
    pytorch   factored (--no-kernels)                   reference (losses.mcr_loss_reference)
    triton    triton (tokenizer_conv.py)                triton (coding_rate.py)
    fused     fused (fused_tokenizer.py)                triton (coding_rate.py)

`auto` never runs Triton where it cannot (triton not installed, a CPU tensor without the
interpreter); `triton` and `fused` are asked for by name, and where Triton cannot run they are an
error, not a silent fallback. On CUDA, `auto` runs for each op the path the last GPU measurement
found fastest (CUDA_DEFAULT below, with its figures); a kernel becomes the default when
bench/gpu_check.py measures it at least 1.5x the best PyTorch path.

Each (op, path) is logged once, the first time it runs. The tokenizer's path can also be chosen by
name, over the mode (`set_tokenizer_path`, or `tokenizer_path_named` for a block of code): one of
TOKENIZER_PATHS (benchmarks and tests).

    python -m pytest -q tests/test_tokenizer.py tests/test_losses.py tests/test_kernels.py
"""
import contextlib
import logging
import os
from typing import NamedTuple

import torch

from .checks import check_views  # noqa: F401 -- part of the package's interface (losses.py uses it)

log = logging.getLogger("brain_semantoks.kernels")

KERNEL_MODES = ("auto", "pytorch", "triton", "fused")
_mode = "auto"           # set by train.py --kernels (--no-kernels: "pytorch"), and by tests
_announced = set()       # which (op, path) pairs have been logged already
TOKENIZER_PATHS = ("reference", "factored", "composed", "triton", "fused")
TRITON_TOKENIZER_PATHS = ("triton", "fused")
_tokenizer_named = None  # a name of TOKENIZER_PATHS chosen over the mode; None: the mode decides

# What `auto` runs on CUDA: for each op the path bench/gpu_check.py found fastest on the last GPU it
# ran on (one H100, bf16, 2026-11-26; BENCHMARKS.md "GPU"). A kernel is the default only at >= 1.5x
# the best PyTorch path. Rerun gpu_check on a GPU and change this table when its figures say so.
CUDA_DEFAULT = {
    # the compiled paper step at batch 512: 0.093 s with the factored PyTorch tokenizer against 0.108 s
    # with the Triton conv kernel, which alone is 0.55x cuDNN's composed conv fwd+bwd (13.6 vs 24.7 ms);
    # the fused factored kernel (fused_tokenizer.py) has not met a GPU yet
    "tokenizer": "factored",
    # the kernel is 1.29x (m 512) to 1.46x (m 4608) the reference fwd+bwd in bf16, 0.96-1.41x in fp32:
    # below the bar, and a few ms of a ~100 ms step
    "MCR loss": "reference",
}
_PYTORCH_PATH = {"tokenizer": "factored", "MCR loss": "reference"}
_TRITON_PATH = {"auto": {"tokenizer": "triton", "MCR loss": "triton"},
                "triton": {"tokenizer": "triton", "MCR loss": "triton"},
                "fused": {"tokenizer": "fused", "MCR loss": "triton"}}


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


_HAVE_TRITON = _triton_importable()


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def set_mode(mode: str) -> None:
    """Run the ops by `mode` (one of KERNEL_MODES) from now on: train.py --kernels."""
    global _mode
    if mode not in KERNEL_MODES:
        raise ValueError(f"--kernels {mode!r}: choose one of {', '.join(KERNEL_MODES)}")
    _mode = mode


@contextlib.contextmanager
def mode(name: str):
    """Temporarily run the ops by the mode `name` (tests, A/B benchmarks)."""
    before = _mode
    set_mode(name)
    try:
        yield
    finally:
        set_mode(before)


def set_enabled(flag: bool) -> None:
    """Allow the Triton paths where `auto` picks them (True) or run the PyTorch paths (False)."""
    set_mode("auto" if flag else "pytorch")


def enabled(flag: bool):
    """Temporarily `auto` (True) or `pytorch` (False): tests, A/B benchmarks."""
    return mode("auto" if flag else "pytorch")


def use_triton(t: torch.Tensor) -> bool:
    """True when Triton can run on `t`: kernels not switched off, triton installed, and `t` on CUDA
    or the CPU interpreter switched on. The per-op rule below builds on it."""
    return _mode != "pytorch" and _HAVE_TRITON and (t.is_cuda or interpreter_on())


def check_mode(mode_name: str, device) -> None:
    """Before a run: a mode that names a kernel needs Triton on `device`; a clear error, not a fallback."""
    set_mode(mode_name)
    if mode_name in ("triton", "fused") and not use_triton(torch.empty(0, device=device)):
        why = ("triton is not installed" if not _HAVE_TRITON else
               f"the run is on {device}, not a CUDA device (the CPU interpreter, TRITON_INTERPRET=1, is for tests)")
        raise ValueError(f"--kernels {mode_name} runs Triton kernels, but {why}; use --kernels auto or pytorch")


def path_for(op: str, t: torch.Tensor) -> str:
    """THE rule: which path runs `op` (a key of CUDA_DEFAULT) on `t`, by the mode (table above)."""
    if not use_triton(t):
        if _mode in ("triton", "fused"):
            raise RuntimeError(f"kernels mode {_mode!r} needs Triton: triton installed, and a CUDA tensor or "
                               f"TRITON_INTERPRET=1")
        return _PYTORCH_PATH[op]
    if _mode == "auto" and t.is_cuda:
        return CUDA_DEFAULT[op]
    return _TRITON_PATH[_mode][op]


def _announce(op: str, path: str, t: torch.Tensor) -> str:
    """Log once per (op, path) which implementation runs, and why not Triton; returns `path`."""
    if (op, path) not in _announced:
        _announced.add((op, path))
        if path in TRITON_TOKENIZER_PATHS:
            why = "" if t.is_cuda else " (interpreter)"
        elif use_triton(t):
            why = " (the measured CUDA default, kernels/__init__.py)" if t.is_cuda else ""
        else:
            why = (" (--kernels pytorch)" if _mode == "pytorch" else
                   " (triton not installed)" if not _HAVE_TRITON else " (no CUDA tensor)")
        log.info("kernels: %s runs the %s path%s", op, path, why)
    return path


# ---------------------------------------------------------------------------------------------
# the tokenizer op: branches, GELU, time mean (SPEC §3 up to the LayerNorm)
# ---------------------------------------------------------------------------------------------
class TokenizerWeights(NamedTuple):
    """The tokenizer's parameters in the linear form the fast paths take (tokenizer.py builds it).
    ROIs are sorted by network; "pair" j = (network n, roi r, head h) = pair_offsets[n] + r*H_n + h."""
    dense_weight: torch.Tensor   # (C, 3, D/2)  'same' 3-tap conv of each ROI
    dense_bias: torch.Tensor     # (N, D/2)
    sg_taps: torch.Tensor        # (M, K) structured branch as cross-correlation taps (zero padding
                                 #        (K-1)//2 left, K//2 right), the skip D in the centre tap
    lin_weight: torch.Tensor     # (M, D/2)     Linear over the (roi, head) channels
    lin_bias: torch.Tensor       # (N, D/2)
    offsets: tuple               # N+1 ROI offsets of the networks
    pair_offsets: tuple          # N+1 pair offsets of the networks
    patch_len: int               # L


def set_tokenizer_path(name) -> None:
    """Run the tokenizer op by the path `name` (one of TOKENIZER_PATHS) from now on; None: by the mode."""
    global _tokenizer_named
    if name is not None and name not in TOKENIZER_PATHS:
        raise ValueError(f"unknown tokenizer path {name!r}; choose one of {TOKENIZER_PATHS}")
    _tokenizer_named = name


@contextlib.contextmanager
def tokenizer_path_named(name):
    """Temporarily run the tokenizer op by the path `name` (tests, A/B benchmarks); None: the mode."""
    before = _tokenizer_named
    set_tokenizer_path(name)
    try:
        yield
    finally:
        set_tokenizer_path(before)


def tokenizer_path(x: torch.Tensor) -> str:
    """The tokenizer op's path: one of TOKENIZER_PATHS; a path named by set_tokenizer_path wins over
    the mode, else `path_for`."""
    if _tokenizer_named is not None:
        if _tokenizer_named in TRITON_TOKENIZER_PATHS and not use_triton(x):
            raise RuntimeError(f"tokenizer path {_tokenizer_named!r} needs Triton: kernels enabled, triton "
                               f"installed, and a CUDA tensor or TRITON_INTERPRET=1")
        return _announce("tokenizer", _tokenizer_named, x)
    return _announce("tokenizer", path_for("tokenizer", x), x)


def tokenizer_conv_gelu_mean(xs: torch.Tensor, w: TokenizerWeights, reference) -> torch.Tensor:
    """The tokenizer op by the path `tokenizer_path` picks. xs (B, C, T') with ROIs sorted by
    network, w the same parameters in linear form, reference(xs) the paper's form -> (B, N, P, D)."""
    path = tokenizer_path(xs)
    if path == "reference":
        return reference(xs)
    if path == "factored":
        from .factored import factored_conv_gelu_mean
        return factored_conv_gelu_mean(xs, w)
    if path == "fused":
        return fused_conv_gelu_mean(xs, w)
    from .composed import compose_weights, grouped_conv_gelu_mean_reference
    with torch.autocast(xs.device.type, enabled=False):  # compose in full precision, then cast once
        weight, bias = compose_weights(w)                # (C, K, D), (N, D)
    if path == "composed":
        return grouped_conv_gelu_mean_reference(xs, weight, bias, w.offsets, w.patch_len)
    # under autocast the op's output is in the autocast dtype, as the factored path's matmuls give it
    # (the kernel itself casts x and weight to that dtype; bias and output follow the inputs' dtype)
    on = torch.is_autocast_enabled(xs.device.type)
    dt = torch.get_autocast_dtype(xs.device.type) if on else xs.dtype
    return grouped_conv_gelu_mean(xs.to(dt), weight.to(dt), bias.to(dt), w.offsets, w.patch_len)


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
    """The Triton kernel of tokenizer_conv.py: all N per-network convs + GELU + time mean in one
    launch. x (B, C, T') ROIs sorted by network, weight (C, K, D), bias (N, D) -> (B, N, P, D)."""
    from .tokenizer_conv import grouped_conv_gelu_mean_triton
    return _eager(grouped_conv_gelu_mean_triton, x, weight, bias, offsets, patch_len)


def fused_conv_gelu_mean(xs: torch.Tensor, w: TokenizerWeights) -> torch.Tensor:
    """The Triton kernels of fused_tokenizer.py: the factored form, both branches, GELU and time mean.
    xs (B, C, T') ROIs sorted by network, w the linear form -> (B, N, P, D); autocast handled inside."""
    from .fused_tokenizer import fused_tokenizer_triton
    return _eager(fused_tokenizer_triton, xs, w)


# ---------------------------------------------------------------------------------------------
# the MCR loss op (SPEC §7)
# ---------------------------------------------------------------------------------------------
def mcr_path(s: torch.Tensor) -> str:
    """The MCR loss's path: "reference" or "triton", by `path_for`."""
    return _announce("MCR loss", path_for("MCR loss", s), s)


def mcr_loss(student_views, teacher_views, eps: float, reference):
    """L_MCR by the path `mcr_path` picks -> (loss, comp, expa); reference: losses.mcr_loss_reference.
    The views are checked first: the rule looks at student_views[0], which bad input may not have."""
    check_views(student_views, teacher_views)
    if mcr_path(student_views[0]) == "reference":
        return reference(student_views, teacher_views, eps)
    from .coding_rate import mcr_loss_triton
    return _eager(mcr_loss_triton, student_views, teacher_views, eps)

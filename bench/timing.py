"""What the kernel benchmarks share: the timer, one line per case, seeded inputs at paper shapes.

bench/kernels.py (the conv and MCR kernels, the compile check, the tile sweep) and
bench/tokenizer_paths.py (the tokenizer op by each path) both time with `run_case`.
"""
import statistics
import time

import numpy as np
import torch


def network_counts():
    """R_n of the SPEC's default 457-ROI map (61, 77, 46, 47, 26, 52, 91, 50, 7)."""
    from data import networks
    return tuple(np.bincount(networks.default_network_map()).tolist())


def median_ms(fn, iters, device=None):
    """Median time of fn() in ms, and the peak memory one call allocates (MiB; 0 off CUDA).

    CUDA: triton.testing.do_bench (CUDA events, L2 cache flushed before every call, median), for
    about `iters` x 5 ms of repetitions. Elsewhere (bench/gpu_check.py --dry-run, on the CPU) the
    wall-clock median of `iters` calls: a smoke test, not a benchmark."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    fn()                                                            # compile / autotune / allocate
    if device.type != "cuda":
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3, 0.0
    from triton.testing import do_bench
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    mem = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    return do_bench(fn, warmup=25, rep=5 * iters, return_mode="median"), mem


def run_case(name, impls, iters, device=None, kernel="triton"):
    """impls: {label: fn}; the first is the eager reference, `kernel` the kernel the speed-ups are
    of. Prints one line and returns {label: (ms, MiB)} (a label that failed is left out, with a
    note printed)."""
    res = {}
    for label, fn in impls.items():
        try:
            res[label] = median_ms(fn, iters, device)
        except Exception as e:  # torch.compile may not handle a case: report and go on
            print(f"  ({name}: {label} failed: {type(e).__name__}: {str(e).splitlines()[0][:100]})")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    parts = [f"{label} {ms:8.3f} ms {mb:7.0f} MiB" for label, (ms, mb) in res.items()]
    if kernel in res:
        parts += [f"x{res[label][0] / res[kernel][0]:.2f} vs {label}" for label in res if label != kernel]
    print(f"{name:56s} | " + " | ".join(parts), flush=True)
    return res


def conv_inputs(B, counts, T, K, D, dtype=torch.float32, device="cpu", seed=0, grad_x=True):
    """Seeded (x (B, C, T), weight (C, K, D), bias (N, D)) with O(1) pre-activations, all requiring
    grad (x only if grad_x: in training x is data), and the N+1 ROI offsets of `counts`."""
    g = torch.Generator(device=device).manual_seed(seed)
    C, N = sum(counts), len(counts)
    x = torch.randn(B, C, T, generator=g, device=device)
    w = torch.randn(C, K, D, generator=g, device=device) / (K * max(counts)) ** 0.5
    b = torch.randn(N, D, generator=g, device=device)
    offsets = tuple(int(o) for o in np.concatenate([[0], np.cumsum(counts)]))
    ts = [t.to(dtype).requires_grad_(grad) for t, grad in ((x, grad_x), (w, True), (b, True))]
    return ts, offsets


PAPER_CONV = dict(B=1024, counts=None, T=100, L=20, K=16, D=768)   # counts None: the SPEC's nine networks

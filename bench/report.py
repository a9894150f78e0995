"""Shared by the bench scripts: their common options, how the device is described, how a result
row is printed, and the random scans they time on.

Every row names the device (a CPU with its bf16 capability), precision, kernel path, peak memory
and the date, so that rows from different machines can be told apart. The rows are printed, not
written into BENCHMARKS.md: its tables name the machine by a label ("dev-CPU (AMD Zen 4)") and
each has its own columns and context, so a figure goes there by hand, with the command that
produced it. `--precision` takes a comma list (fp32,bf16): the scripts then time each precision
in the same process, interleaved, so that load from other users of a shared machine hits both
alike."""
import platform
import resource
import statistics
import time

import numpy as np
import torch

from data.scans import Scans
import kernels
from machine import runtime


def add_common_args(ap):
    """Options every bench script takes."""
    ap.add_argument("--preset", default="paper", choices=["paper", "demo"],
                    help="model size: paper (D 768, depth 8, what a GPU run trains) or demo (D 192, depth 4, "
                         "the CPU quick start) (default %(default)s)")
    ap.add_argument("--device", default="auto",
                    help="auto (the GPU when there is one, else the CPU), cpu, cuda, cuda:1, ... (default %(default)s)")
    ap.add_argument("--kernels", default="auto", choices=list(kernels.KERNEL_MODES),
                    help="which path runs the tokenizer and the MCR loss, as train.py --kernels: auto (the measured "
                         "default), pytorch, triton, fused (the last two need a GPU) (default %(default)s)")
    ap.add_argument("--no-kernels", action="store_true", help="same as --kernels pytorch")
    ap.add_argument("--threads", type=positive_int, default=None,
                    help="torch CPU threads (default: torch's, one per core; on a busy 2-core machine 1 thread "
                         "can be faster for tiny models, see BENCHMARKS.md)")
    ap.add_argument("--precision", default="auto", type=_precision_list,
                    help="auto, fp32, bf16, or a comma list timed side by side in one process, e.g. fp32,bf16 "
                         "(default auto: bf16 autocast on a GPU or a CPU with native bf16, else fp32)")


def setup(args):
    """Apply the common options; returns the torch device."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = runtime.resolve_device(args.device)
    kernels.check_mode("pytorch" if args.no_kernels else args.kernels, device)
    return device


def precisions(arg):
    """'fp32,bf16' -> ['fp32', 'bf16'] (each checked: auto, fp32 or bf16)."""
    out = [p.strip() for p in arg.split(",") if p.strip()]
    bad = [p for p in out if p not in runtime.PRECISIONS]
    if not out or bad:
        raise ValueError(f"--precision {arg!r}: give auto, fp32, bf16 or a comma list of them")
    return out


def positive_int(arg):
    """argparse type for counts (crops, scans, steps, repeats, threads): an int of at least 1."""
    import argparse
    try:
        n = int(arg)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{arg!r} is not a positive integer")
    return n


def _precision_list(arg):
    """argparse type for --precision: the list, or argparse's usage error with our message."""
    import argparse
    try:
        return precisions(arg)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cpu_name():
    """The CPU's model name and its native bf16 instructions, e.g. 'AMD EPYC (bf16: AVX512_BF16)'."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name} (bf16: {runtime.cpu_bf16_feature() or 'none'})"


def device_columns(device, precision_note="", precision=None):
    """'device | precision, the ops' paths' and the peak memory so far, for a results row.
    precision: 'fp32' or 'bf16' as resolved (default: what --precision auto gives on `device`)."""
    prec = precision or runtime.resolve_precision("auto", device)[0]
    prec = "bf16 autocast" if prec == "bf16" else "fp32"
    if device.type == "cuda":
        mem = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB GPU"
        dev = torch.cuda.get_device_name(device)
    else:
        mem = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB RSS"
        dev = f"CPU {cpu_name()}, {torch.get_num_threads()} threads"
    t = torch.empty(0, device=device)
    kern = f"tokenizer {kernels.path_for('tokenizer', t)}, MCR {kernels.path_for('MCR loss', t)}"
    return f"{dev} | {prec}{precision_note}, {kern}", mem


def random_scans(n_scans, n_rois=457, length=200, seed=0):
    """Scans of standard-normal float16 scans (S, C, T) in RAM, each scan its own subject
    (throughput does not depend on the values); built directly, as synthetic_pool does."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_scans, n_rois, length), dtype=np.float32).astype(np.float16)  # (S, C, T)
    return Scans(data=x, lengths=np.full(n_scans, length, dtype=np.int64),
                      subjects=[f"scan{i:05d}" for i in range(n_scans)])


def synthetic_pool(n_scans, net_of, length, device, seed=0, chunk=2048):
    """A UK-Biobank-sized pool, one scan per subject: AR(1)-smoothed network signals with random
    couplings, spread over each network's ROIs with subject-specific loadings (a fingerprint), plus
    noise. Generated on `device` chunk by chunk into a host float16 array -> Scans."""
    g = torch.Generator(device=device).manual_seed(seed)
    net = torch.as_tensor(net_of, device=device)
    N, C = int(net.max()) + 1, len(net_of)
    out = np.empty((n_scans, C, length), dtype=np.float16)
    kernel = (0.8 ** torch.arange(15, -1, -1, device=device, dtype=torch.float32)).view(1, 1, -1)
    for s0 in range(0, n_scans, chunk):
        b = min(chunk, n_scans - s0)
        mix = torch.randn(b, N, N, device=device, generator=g) * 0.4 + torch.eye(N, device=device)
        src = torch.randn(b * N, 1, length + 15, device=device, generator=g)
        src = torch.nn.functional.conv1d(src, kernel).view(b, N, length)               # AR(1)-like
        sig = mix @ src                                                                   # coupled networks
        load = 1 + 0.5 * torch.randn(b, C, 1, device=device, generator=g)                # fingerprint
        x = load * sig[:, net] + torch.randn(b, C, length, device=device, generator=g)
        out[s0:s0 + b] = x.half().cpu().numpy()
    return Scans(data=out, lengths=np.full(n_scans, length, dtype=np.int64),
                      subjects=[f"sub-{i:05d}" for i in range(n_scans)])


def medians_row(times):
    """{label: [seconds]} -> 'label median s, ...; bf16 x1.9 faster than fp32' for the summary line."""
    med = {k: statistics.median(v) for k, v in times.items()}
    parts = [f"{k} {v:.3f} s" for k, v in med.items()]
    if "fp32" in med and len(med) > 1:
        parts += [f"{k} x{med['fp32'] / v:.2f} vs fp32" for k, v in med.items() if k != "fp32"]
    return "; ".join(parts)


def emit(row):
    """Print a result row with today's date as its last column."""
    print(f"{row} {time.strftime('%Y-%m-%d')} |")

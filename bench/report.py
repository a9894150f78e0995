"""Shared by the bench scripts: how the device is described and how a result row is written.

Every row names the device, precision, kernel path and peak memory, so rows from different
machines in BENCHMARKS.md can be told apart."""
import os
import platform
import resource
import time

import torch

import kernels

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "BENCHMARKS.md")


def add_common_args(ap):
    """Options every bench script takes."""
    ap.add_argument("--preset", default="paper", choices=["paper", "demo"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-kernels", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--append", action="store_true", help="append the result row to BENCHMARKS.md")


def setup(args):
    """Apply the common options; returns the torch device."""
    if args.threads:
        torch.set_num_threads(args.threads)
    kernels.set_enabled(not args.no_kernels)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(auto if args.device == "auto" else args.device)


def device_columns(device, no_kernels=False, precision_note=""):
    """'device | precision, kernels on/off' and the peak memory so far, for a results row."""
    if device.type == "cuda":
        mem = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB GPU"
        dev, prec = torch.cuda.get_device_name(device), "bf16 autocast"
    else:
        mem = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB RSS"
        dev, prec = f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads", "fp32"
    kern = "off" if no_kernels or not kernels.use_triton(torch.empty(0, device=device)) else "on"
    return f"{dev} | {prec}{precision_note}, kernels {kern}", mem


def emit(row, append):
    """Print the row; with append, add it (dated) to BENCHMARKS.md as well."""
    row = f"{row} {time.strftime('%Y-%m-%d')} |"
    print(row)
    if append:
        with open(BENCHMARKS, "a") as f:
            f.write(row + "\n")

"""Benchmark probe feature extraction (probe.encoder_features: 8 evenly spaced z-scored crops per
scan through a frozen encoder, SPEC §9) for a preset on the current device.

Random scans (C = 457, T = 200) and a randomly initialised encoder: throughput does not depend on
the weights. The whole pipeline is timed (crop gathering and z-scoring included) after one untimed
warm-up pass. Prints one Markdown table row; --append adds it to BENCHMARKS.md.

    python bench/probe.py                         # paper preset, CPU: 32 scans = 256 crops
    python bench/probe.py --append                # on a GPU: 512 scans = 4096 crops, bf16 autocast
    python bench/probe.py --preset demo --scans 64
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import data  # noqa: E402
import networks  # noqa: E402
import probe  # noqa: E402
from bench.report import add_common_args, device_columns, emit, setup  # noqa: E402
from encoder import Encoder, EncoderConfig  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap)
    ap.add_argument("--scans", type=int, default=None, help="scans timed (8 crops each; default 32 CPU, 512 GPU)")
    ap.add_argument("--batch-size", type=int, default=None, help="crops per forward (default 64 CPU, 512 GPU)")
    args = ap.parse_args()
    device = setup(args)
    gpu = device.type == "cuda"
    S = args.scans or (512 if gpu else 32)
    B = args.batch_size or (512 if gpu else 64)

    torch.manual_seed(0)
    m = networks.default_network_map()
    enc = Encoder(EncoderConfig.preset(args.preset), m).to(device).eval()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "random.npy")
        np.save(path, rng.standard_normal((S, len(m), 200), dtype=np.float32).astype(np.float16))
        scans = data.load_scans(path)
        k = max(1, B // 8)                                          # one forward's worth of scans
        warm = data.Scans(data=scans.data[:k], lengths=scans.lengths[:k], subjects=scans.subjects[:k])
        probe.encoder_features(enc, warm, batch_size=B, device=device, label="warm-up")
        if gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        probe.encoder_features(enc, scans, batch_size=B, device=device, label="timed")
        if gpu:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0

    cols, mem = device_columns(device, args.no_kernels)
    emit(f"| probe features | {args.preset} | B={B} crops | {cols} | {dt:.2f} s for {S * 8} crops | "
         f"{S * 8 / dt:.1f} crops/s | {mem} |", args.append)

if __name__ == "__main__":
    main()

"""Benchmark probe feature extraction (features.encoder_features: 8 evenly spaced z-scored crops per
scan through a frozen encoder, SPEC §9) for a preset on the current device.

Random scans (C = 457, T = 200) and a randomly initialised encoder: throughput does not depend on
the weights. The whole pipeline is timed (crop gathering and z-scoring included) after one untimed
warm-up pass. Prints one Markdown table row per precision (bench/report.py).

    python bench/probe.py                         # paper preset: CPU 32 scans = 256 crops; GPU 512 = 4096, bf16
    python bench/probe.py --preset demo --scans 64
    python bench/probe.py --precision fp32,bf16 --repeats 3   # side by side on a CPU with native bf16

`time_features` and `preset_encoder` are used by bench/gpu_check.py too.
"""
import argparse
import dataclasses
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.scans import Scans  # noqa: E402
from evaluation import features  # noqa: E402
from data import networks  # noqa: E402
from machine import runtime  # noqa: E402
from bench.report import (add_common_args, device_columns, emit, medians_row,  # noqa: E402
                          positive_int, random_scans, setup)
from encoder import Encoder, EncoderConfig  # noqa: E402


def time_features(enc, scans, device, batch_size, precision, repeats=1):
    """Seconds of each of `repeats` whole passes of features.encoder_features over `scans` (after one
    untimed warm-up pass over one forward's worth of scans)."""
    k = max(1, batch_size // 8)                                     # one forward's worth of scans
    warm = Scans(data=scans.data[:k], lengths=scans.lengths[:k], subjects=scans.subjects[:k])
    features.encoder_features(enc, warm, batch_size=batch_size, device=device, label="warm-up", precision=precision)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        features.encoder_features(enc, scans, batch_size=batch_size, device=device, label="timed", precision=precision)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def preset_encoder(preset, device, network_map=None, **overrides):
    """A randomly initialised encoder of a preset (throughput does not depend on the weights), the
    same weights every call (seed 0) without touching the caller's global RNG (fork_rng).
    Not features.random_encoder: that one copies a checkpoint's config, this one takes a preset."""
    m = networks.default_network_map() if network_map is None else network_map
    cfg = dataclasses.replace(EncoderConfig.preset(preset), **overrides)
    with torch.random.fork_rng(devices=[]):                       # built on the CPU, then moved
        torch.manual_seed(0)
        enc = Encoder(cfg, m)
    return enc.to(device).eval()


def sizes(args, device):
    """(scans timed, crops per forward): --scans / --batch-size, else 512 / 512 on a GPU, 32 / 64 on a CPU."""
    gpu = device.type == "cuda"
    return args.scans or (512 if gpu else 32), args.batch_size or (512 if gpu else 64)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap)
    ap.add_argument("--scans", type=positive_int, default=None, help="scans timed (8 crops each; default 32 CPU, 512 GPU)")
    ap.add_argument("--batch-size", type=positive_int, default=None, help="crops per forward (default 64 CPU, 512 GPU)")
    ap.add_argument("--repeats", type=positive_int, default=1,
                    help="timed passes per precision, the median reported (default %(default)s; take 3 or more "
                         "on a shared machine)")
    ap.add_argument("--ckpt", action="append", default=[],
                    help="time these checkpoints' teachers instead of a random encoder (ours or the authors' "
                         "format; repeat the option to compare, e.g. an authors' .pth and its converted teacher.pt)")
    args = ap.parse_args(argv)
    if args.ckpt:
        return compare_checkpoints(args)
    device = setup(args)
    S, B = sizes(args, device)
    enc = preset_encoder(args.preset, device)
    scans = random_scans(S, n_rois=enc.tokenizer.n_rois)
    precs = {p: runtime.resolve_precision(p, device)[0] for p in args.precision}
    times = {p: [] for p in precs}
    for _ in range(args.repeats):                    # precisions take turns (bench/report.py says why)
        for p, resolved in precs.items():
            times[p] += time_features(enc, scans, device, B, resolved)
    for p, resolved in precs.items():
        dt = statistics.median(times[p])
        cols, mem = device_columns(device, precision=resolved)
        emit(f"| probe features | {args.preset} | B={B} crops | {cols} | {dt:.2f} s for {S * 8} crops | "
             f"{S * 8 / dt:.1f} crops/s | {mem} |")
    if len(precs) > 1:
        print(f"medians, interleaved in one process: {medians_row(times)}")


def compare_checkpoints(args):
    """--ckpt A --ckpt B: the same pipeline for every checkpoint's teacher, passes taking turns."""
    from training.checkpoint import load_teacher
    device = setup(args)
    S, B = sizes(args, device)
    encoders = {path: load_teacher(path, map_location=device)[0] for path in args.ckpt}
    scans = random_scans(S, n_rois=next(iter(encoders.values())).tokenizer.n_rois)
    precision = runtime.resolve_precision(args.precision[0], device)[0]
    times = {path: [] for path in encoders}
    for _ in range(args.repeats):
        for path, enc in encoders.items():
            times[path] += time_features(enc, scans, device, B, precision)
    for path in encoders:
        dt = statistics.median(times[path])
        cols, mem = device_columns(device, precision=precision)
        emit(f"| probe features | {os.path.basename(path)} | B={B} crops | {cols} | {dt:.2f} s for {S * 8} crops | "
             f"{S * 8 / dt:.1f} crops/s | {mem} |")


if __name__ == "__main__":
    main()

"""Benchmark one pretraining step (train.Trainer.step: both views through student and teacher,
losses, backward, AdamW, EMA) for a preset and batch size on the current device.

Inputs are random scans (S = 2·B, C = 457, T = 200) served by the real batch source, so data
sampling and augmentation are part of the measured step. Reports the median step time over
--steps steps after --warmup steps, samples/s and peak memory (GPU: max allocated; CPU: peak RSS
of the process). Prints one Markdown table row; --append adds it to BENCHMARKS.md.

    python bench/train_step.py --preset paper --batch-size 32            # the CPU target (≤ 5 s/step)
    python bench/train_step.py --preset paper --batch-size 512 --append  # the paper setting on a GPU
    python bench/train_step.py --preset demo --profile                   # top ops by self time
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import data  # noqa: E402
import networks  # noqa: E402
from bench.report import add_common_args, device_columns, emit, setup  # noqa: E402
from train import Trainer, encoder_config, keep_freed_memory, resolve_config  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--default-malloc", action="store_true",
                    help="skip train.keep_freed_memory() on CPU (to measure what it saves)")
    ap.add_argument("--profile", action="store_true", help="print the torch.profiler table of one step")
    args = ap.parse_args()
    device = setup(args)
    if device.type == "cpu" and not args.default_malloc:
        keep_freed_memory()

    cfg = resolve_config({"preset": args.preset, "batch_size": args.batch_size, "steps": 1000, "data": "random"})
    enc_cfg = encoder_config(cfg)
    B, C, T = args.batch_size, 457, 200
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "random.npy")
        np.save(path, rng.standard_normal((2 * B, C, T), dtype=np.float32).astype(np.float16))
        scans = data.load_scans(path)
        batches = data.TrainBatches(scans, device=device, crop_len=enc_cfg.crop_len)
    tr = Trainer(cfg, enc_cfg, networks.default_network_map(), batches, cfg.steps, device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = []
    for i in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        r = tr.step(i)
        r["loss"].item()  # one sync per step here: we time the whole step
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            tr.step(args.warmup + args.steps)
            sync()
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=25))

    med = statistics.median(times)
    cols, mem = device_columns(device, args.no_kernels, ", default malloc" if args.default_malloc else "")
    emit(f"| train step | {args.preset} | B={B} | {cols} | {med:.3f} s/step (median of {len(times)}) | "
         f"{B / med:.1f} samples/s | {mem} |", args.append)

if __name__ == "__main__":
    main()

"""Benchmark one pretraining step (trainer.Trainer.step: both views through student and teacher,
losses, backward, AdamW, EMA) for a preset and batch size on the current device.

Inputs are random scans (S = 2·B, C = 457, T = 200) served by the real batch source, so data
sampling and augmentation are part of the measured step. Reports the median step time over
--steps steps after --warmup steps, samples/s and peak memory (GPU: max allocated; CPU: peak RSS
of the process). Prints one Markdown table row per precision (bench/report.py).

    python bench/train_step.py --preset paper --batch-size 32            # the CPU target (≤ 5 s/step)
    python bench/train_step.py --preset paper --batch-size 32 --steps 3 --warmup 1 --precision fp32,bf16
    python bench/train_step.py --preset paper --batch-size 512           # the paper setting on a GPU
    python bench/train_step.py --preset paper --batch-size 512 --compile off   # eager, for comparison
    python bench/train_step.py --preset demo --profile                   # top ops by self time

With a comma list of precisions the steps alternate between one trainer per precision in the same
process (see bench/report.py), and a last line gives the medians and the speed-up over fp32.
`make_trainer`, `timed_step`, `time_steps` and `host_syncs` (the device-to-host syncs of one step as
train_loop runs it: Trainer.step and LogWindow.add) are used by bench/gpu_check.py too.
"""
import argparse
import os
import statistics
import sys
import time
import warnings

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from data import networks  # noqa: E402
from bench.report import (add_common_args, device_columns, emit, medians_row,  # noqa: E402
                          positive_int, random_scans, setup)
from machine import runtime  # noqa: E402
from training.batches import TrainBatches  # noqa: E402
from training.config import encoder_config, resolve_config  # noqa: E402
from training.trainer import LogWindow, Trainer  # noqa: E402


def make_trainer(preset, batch_size, device, precision="auto", compile="off", scans=None, network_map=None,
                 compile_backend="inductor", **overrides):
    """A Trainer on random scans (2·batch_size of them unless `scans` is given), schedules for 1,000
    steps. `overrides`: any other TrainConfig field (dim, depth, ... for tiny models)."""
    cfg = resolve_config({"preset": preset, "batch_size": batch_size, "steps": 1000, "data": "random",
                          "precision": precision, "compile": compile, **overrides})
    enc_cfg = encoder_config(cfg)
    network_map = networks.default_network_map() if network_map is None else network_map
    scans = scans if scans is not None else random_scans(2 * batch_size, n_rois=len(network_map))
    batches = TrainBatches(scans, device=device, crop_len=enc_cfg.crop_len)
    return Trainer(cfg, enc_cfg, network_map, batches, cfg.steps, device, compile_backend=compile_backend)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_step(tr, i):
    """One whole optimizer step, synchronised -> (seconds, losses dict, peak GPU bytes or None)."""
    device = tr.device
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    r = tr.step(i)
    r["loss"].item()  # one sync per step here: we time the whole step
    _sync(device)
    dt = time.perf_counter() - t0
    return dt, r, (torch.cuda.max_memory_allocated() if device.type == "cuda" else None)


def time_steps(trainers, warmup, steps):
    """{label: Trainer} -> {label: [seconds of each timed step]}, {label: peak GPU bytes}.
    The trainers take turns step by step, so a busy neighbour on a shared machine slows all alike."""
    times, peak = {k: [] for k in trainers}, {k: 0 for k in trainers}
    for i in range(warmup + steps):
        for k, tr in trainers.items():
            dt, _, mem = timed_step(tr, i)
            if i >= warmup:
                times[k].append(dt)
                peak[k] = max(peak[k], mem or 0)
    return times, peak


def host_syncs(tr, step):
    """Device-to-host synchronisations inside one eager training step as train_loop runs it (CUDA's sync
    debug mode): Trainer.step and LogWindow.add, which sums the step's losses for the next log line."""
    if tr.device.type != "cuda":
        return "Host syncs per step: not measurable on the CPU (torch.cuda.set_sync_debug_mode needs CUDA)."
    window = LogWindow(tr.device, tr.world, tr.total, out=None)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            window.add(step, tr.step(step))
        finally:
            torch.cuda.set_sync_debug_mode(0)
    # the warning's file:line is the Python line whose op synchronised
    syncs = [f"{os.path.relpath(w.filename, REPO)}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]
    where = "".join(f"\n- {s} ({syncs.count(s)}x)" for s in sorted(set(syncs)))
    return f"Host syncs in one eager step: **{len(syncs)}**{where}"


def profile_table(tr, i, rows=25):
    """torch.profiler table of one step, top ops by self time."""
    from torch.profiler import ProfilerActivity, profile
    cuda = tr.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        tr.step(i)
        _sync(tr.device)
    return prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total",
                                     row_limit=rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap)
    ap.add_argument("--batch-size", type=positive_int, default=32,
                    help="samples per step, two crops each (default %(default)s, the CPU target; 512 is the paper's)")
    ap.add_argument("--steps", type=positive_int, default=5, help="timed steps; the median is reported (default %(default)s)")
    ap.add_argument("--warmup", type=int, default=2,
                    help="untimed steps first: allocator, autotuning and compilation settle (default %(default)s)")
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                    help="torch.compile the forwards, as train.py --compile (auto: on for CUDA, off on CPU)")
    ap.add_argument("--default-malloc", action="store_true",
                    help="skip runtime.keep_freed_memory() on CPU (to measure what it saves)")
    ap.add_argument("--profile", action="store_true", help="print the torch.profiler table of one step")
    args = ap.parse_args(argv)
    device = setup(args)
    runtime.tune_cpu(device, keep_memory=not args.default_malloc)    # as train.py
    scans = random_scans(2 * args.batch_size)
    trainers = {p: make_trainer(args.preset, args.batch_size, device, p, args.compile, scans=scans)
                for p in args.precision}
    times, peak = time_steps(trainers, args.warmup, args.steps)
    if args.profile:
        for k, tr in trainers.items():
            print(f"profile of one step, precision {k} ({tr.precision}):")
            print(profile_table(tr, args.warmup + args.steps))

    B = args.batch_size
    for k, tr in trainers.items():
        med = statistics.median(times[k])
        cols, mem = device_columns(device, (", default malloc" if args.default_malloc else "")
                                   + (", compiled" if tr.compiled else ""), precision=tr.precision)
        mem = f"{peak[k] / 2**30:.1f} GiB GPU" if device.type == "cuda" else mem
        emit(f"| train step | {args.preset} | B={B} | {cols} | {med:.3f} s/step (median of {len(times[k])}) | "
             f"{B / med:.1f} samples/s | {mem} |")
    if len(trainers) > 1:
        print(f"medians, interleaved in one process: {medians_row(times)}")


if __name__ == "__main__":
    main()

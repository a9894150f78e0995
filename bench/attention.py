"""Benchmark attention at a preset's size, the forms encoder.attention chooses between: the
written-out softmax(q kᵀ / √d) v (encoder.softmax_attention, its choice for bf16 on a CPU) and
PyTorch's fused scaled_dot_product_attention (every other case), and for bf16 also the fused one
on inputs cast to fp32 (the CPU's bf16 path before the written-out form). Forward alone (inference,
as in probe features) and forward + backward (training), per precision, the forms taking turns.

    python bench/attention.py                          # paper: 64 crops, 12 heads, 46 tokens
    python bench/attention.py --precision fp32,bf16 --crops 512

Prints one Markdown table row per case: form, pass, device and precision, ms (median), its time over
the written-out form's.
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data import networks  # noqa: E402
from machine import runtime  # noqa: E402
from bench.report import add_common_args, device_columns, emit, positive_int, setup  # noqa: E402
from encoder import EncoderConfig, softmax_attention  # noqa: E402


def fused_in_fp32(q, k, v):
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)


FORMS = {"written-out": softmax_attention, "fused SDPA": F.scaled_dot_product_attention,
         "fused SDPA in fp32": fused_in_fp32}


def time_once(fn, qkv, backward, device):
    """Seconds of one call (and its backward with a ones upstream gradient)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    if backward:
        fn(*qkv).sum().backward()
    else:
        with torch.inference_mode():
            fn(*qkv)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap)
    ap.add_argument("--crops", type=positive_int, default=64, help="sequences per call (default %(default)s)")
    ap.add_argument("--repeats", type=positive_int, default=9, help="timed calls per case, after 2 untimed (default %(default)s)")
    args = ap.parse_args(argv)
    device = setup(args)
    cfg = EncoderConfig.preset(args.preset)
    n_tokens = 1 + len(networks.DEFAULT_NETWORK_NAMES) * (cfg.crop_len // cfg.patch_len)
    shape = (args.crops, n_tokens, 3, cfg.heads, cfg.dim // cfg.heads)        # (B, S, 3, h, d), as Attention's qkv
    print(f"attention, {args.preset} preset: B {args.crops}, h {cfg.heads}, S {n_tokens}, d {shape[-1]}; "
          f"{args.repeats} calls per case, the forms taking turns")
    for backward in (False, True):
        for prec in args.precision:
            dtype = torch.bfloat16 if runtime.resolve_precision(prec, device)[0] == "bf16" else torch.float32
            forms = {k: f for k, f in FORMS.items() if dtype == torch.bfloat16 or f is not fused_in_fp32}
            times = {form: [] for form in forms}
            for i in range(args.repeats + 2):                          # the forms take turns
                for form, fn in forms.items():
                    qkv = torch.randn(shape, device=device, dtype=dtype, requires_grad=backward)
                    qkv = qkv.permute(2, 0, 3, 1, 4)                  # 3 x (B, h, S, d), strided as in the encoder
                    t = time_once(fn, qkv, backward, device)
                    if i >= 2:
                        times[form].append(t)
            med = {form: statistics.median(ts) * 1e3 for form, ts in times.items()}
            dev, mem = device_columns(device, precision="bf16" if dtype == torch.bfloat16 else "fp32")
            for form in forms:
                emit(f"| {form} | {'fwd+bwd' if backward else 'fwd'} | {dev} | {med[form]:.2f} ms "
                     f"| {med[form] / med['written-out']:.2f}x written-out's | {mem}")


if __name__ == "__main__":
    main()

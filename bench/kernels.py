"""Benchmark the Triton kernels against the PyTorch references at paper shapes (SPEC §3, §7).

Cases, forward and forward+backward, each on the reference (eager and torch.compile) and on the
Triton kernel:
- tokenizer conv: B = 1024 crops (batch 512, two views), C = 457 ROIs in the SPEC's nine
  networks, T' = 100, L = 20, K = 16 taps, D = 768; the backward asks for weight and bias grads
  only (x is data in training);
- MCR loss: p = 128, m = 512 (L_CLS) and m = 4608 = B·N (L_TTR);
- the tokenizer op by each path at the conv's shapes (D/2 = 384, H_n = ceil(384/R_n)), the fused
  factored kernel among them: bench/tokenizer_paths.py.
One line per case: median time (triton.testing.do_bench: CUDA events, L2 flushed), peak memory,
speed-up of Triton over each reference. bench/gpu_check.py calls bench_conv, bench_mcr, sweep_conv
and sweep_table.

    python bench/kernels.py [--dtype fp32|bf16] [--tf32] [--iters 20] [--no-compile]
                            [--only conv|mcr|tokenizer] [--conv-blocks rows=128,d=128]   # tile experiments
    python bench/kernels.py --dtype bf16 --sweep           # the tokenizer conv at each tile variant of conv_sweep()
    python bench/kernels.py --compile-check [--dtype bf16] [--sweep]   # no GPU needed: compile for sm_90,
                                                                       # shared memory and registers per kernel

Without CUDA it says so and exits 0 (the CPU interpreter is far too slow to time).
"""
import argparse
import dataclasses
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.report import positive_int  # noqa: E402
from bench.timing import PAPER_CONV, conv_inputs, network_counts, run_case  # noqa: E402,F401 -- tests use them from here


def bench_conv(dtype, iters, compile_ref, blocks=None, device="cuda", shape=None, reference=True):
    """Tokenizer conv fwd and fwd+bwd: reference (+ compiled; reference=False: neither) vs Triton ->
    [(case name, run_case result)]."""
    from kernels.composed import grouped_conv_gelu_mean_reference
    from kernels.tokenizer_conv import grouped_conv_gelu_mean_triton
    sh = {**PAPER_CONV, **(shape or {})}
    counts = sh["counts"] or network_counts()
    B, T, L, K, D = (sh[k] for k in ("B", "T", "L", "K", "D"))
    C = sum(counts)
    (x, w, b), offsets = conv_inputs(B, counts, T, K, D, dtype, device, grad_x=False)
    g = torch.randn(B, len(counts), T // L, D, device=device, dtype=dtype)
    fns = {"ref": grouped_conv_gelu_mean_reference} if reference else {}
    if compile_ref and reference:
        fns["compiled"] = torch.compile(grouped_conv_gelu_mean_reference)
    fns["triton"] = lambda *a: grouped_conv_gelu_mean_triton(*a, blocks=blocks)
    shape = f"B={B} C={C} T'={T} L={L} K={K} D={D} N={len(counts)}"

    def fwd(f):
        def run():
            with torch.no_grad():
                f(x, w, b, offsets, L)
        return run

    def fwd_bwd(f):
        def run():
            torch.autograd.grad(f(x, w, b, offsets, L), (w, b), g)
        return run

    return [(name, run_case(name, {k: make(f) for k, f in fns.items()}, iters, device))
            for name, make in ((f"conv fwd {shape}", fwd), (f"conv fwd+bwd {shape}", fwd_bwd))]


def bench_mcr(dtype, iters, compile_ref, device="cuda", ms=(512, 4608), p=128):
    """MCR loss fwd and fwd+bwd at m rows (L_CLS: B, L_TTR: B·N) -> [(case name, run_case result)]."""
    from kernels.coding_rate import mcr_loss_triton
    from losses import mcr_loss_reference
    fns = {"ref": mcr_loss_reference}
    if compile_ref:
        fns["compiled"] = torch.compile(mcr_loss_reference)
    fns["triton"] = mcr_loss_triton
    rows = []
    for m in ms:
        s = [F.normalize(torch.randn(m, p, device=device), dim=-1).to(dtype).requires_grad_() for _ in range(2)]
        t = [F.normalize(torch.randn(m, p, device=device), dim=-1).to(dtype) for _ in range(2)]

        def fwd(f):
            def run():
                with torch.no_grad():
                    f(s, t)
            return run

        def fwd_bwd(f):
            def run():
                torch.autograd.grad(f(s, t)[0], s)
            return run

        for name, make in ((f"mcr fwd m={m} p={p}", fwd), (f"mcr fwd+bwd m={m} p={p}", fwd_bwd)):
            rows.append((name, run_case(name, {k: make(f) for k, f in fns.items()}, iters, device)))
    return rows


def conv_sweep():
    """(label, ConvBlocks) variants of the tokenizer conv's GPU tiles, changed from the default one or
    two fields at a time, for --sweep and gpu_check's tiles stage. The default was never tuned by
    timing; `--compile-check --sweep` prints each variant's registers (BENCHMARKS.md has the table:
    above 128 per thread at 8 warps, one block per SM). Left out: 4 warps (the forward spills) and
    ck_w=256 (255 registers in the weight-gradient kernel)."""
    from kernels.tokenizer_conv import ConvBlocks
    changes = [{}, dict(rows=128), dict(rows=32), dict(ck=64), dict(d=64), dict(rows_b=64), dict(ck_w=64),
               dict(d=64, rows=128), dict(d=64, ck=64, ck_w=64)]
    return [(", ".join(f"{k}={v}" for k, v in c.items()) or "default", dataclasses.replace(ConvBlocks(), **c))
            for c in changes]


def _ptxas_usage(ptx):
    """'N registers, S B spilled' from a ptxas bundled with triton run on `ptx` (for sm_90a), or
    'registers n/a' when none of them reads this PTX version."""
    import triton
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        for name in ("ptxas-blackwell", "ptxas"):
            exe = os.path.join(bindir, name)
            if not os.path.exists(exe):
                continue
            r = subprocess.run([exe, "-v", "--gpu-name=sm_90a", src, "-o", os.path.join(tmp, "k.cubin")],
                               capture_output=True, text=True)
            regs = re.search(r"Used (\d+) registers", r.stderr)
            spill = re.search(r"(\d+) bytes spill stores", r.stderr)
            if r.returncode == 0 and regs:
                return f"{regs.group(1)} registers, {spill.group(1) if spill else '?'} B spilled"
    return "registers n/a"


# The integer arguments' values at paper shapes (batch 512: B·P = 5120 rows; MCR m = 512 or 4608
# rows, 256 per split). Triton's JIT marks an int that is a multiple of 16, and a 16-byte-aligned
# pointer, divisible by 16; only with these marks does it vectorise and pipeline the loads
# (cp.async), which changes the registers a kernel needs (the conv's weight-gradient kernel: 254
# without, 166 with).
PAPER_INTS = dict(BP=5120, C=457, T=100, D=768, N=9, P=5, L=20, m=512, p=128, rows_per_split=256,
                  HALF=384, M=3695, SPLIT=1024)            # the last three: the fused tokenizer's


def _jit_attrs(fn, sig):
    """The divisibility marks the JIT would give `fn`'s arguments at paper shapes."""
    return {(fn.arg_names.index(a),): [["tt.divisibility", 16]]
            for a, ty in sig.items() if ty.startswith("*") or PAPER_INTS.get(a, 1) % 16 == 0}


def compile_check(dtype=None, sweep=False):
    """Compile every kernel (bf16, fp32 ieee, fp32 tf32; or one --dtype) for sm_90 with the GPU tiles
    (with `sweep`, the tokenizer conv also at every tile variant of conv_sweep): catches what the CPU
    interpreter lets through (dtypes, shared memory, unsupported constructs) and prints each kernel's
    shared memory, registers per thread (ptxas -v) and whether its loads are pipelined (cp.async in
    the Triton GPU IR), specialised as the JIT specialises them at paper shapes. No GPU needed."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("--compile-check needs TRITON_INTERPRET unset (the interpreter replaces @triton.jit)")
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from bench.tokenizer_paths import fused_compile_cases
    from kernels import coding_rate as cr
    from kernels import tokenizer_conv as tc

    mcr = cr.McrBlocks()
    tiles = conv_sweep() if sweep else [("default", tc.ConvBlocks())]
    ints = {k: "i32" for k in ("BP", "C", "T", "D", "N", "P", "L")}
    ints_b = {k: ints[k] for k in ints if k != "N"}
    target = GPUTarget("cuda", 90, 32)
    variants = (("bf16", tl.bfloat16, "ieee"), ("fp32", tl.float32, "ieee"), ("fp32", tl.float32, "tf32"))
    for dt, dot, prec in (v for v in variants if dtype in (None, v[0])):
        P = f"*{dt}"
        cc = dict(K=16, PAD_L=7, DOT_DTYPE=dot, PRECISION=prec)
        cases = []
        for label, conv in tiles:
            cases += [
                (label, tc._conv_gelu_mean_fwd_kernel,
                 dict(x_ptr=P, w_ptr=P, bias_ptr=P, offs_ptr="*i32", out_ptr=P, **ints),
                 dict(BLOCK_ROWS=conv.rows, BLOCK_D=conv.d, BLOCK_CK=conv.ck, **cc), conv.num_warps),
                (label, tc._conv_gelu_mean_bwd_gh_kernel,
                 dict(x_ptr=P, w_ptr=P, bias_ptr=P, offs_ptr="*i32", gout_ptr=P, gh_ptr=P, gbias_ptr="*fp32", **ints),
                 dict(BLOCK_ROWS=conv.rows_b, BLOCK_D=conv.d, BLOCK_CK=conv.ck, **cc), conv.num_warps),
                (label, tc._conv_gelu_mean_bwd_weight_kernel,
                 dict(x_ptr=P, gh_ptr=P, offs_ptr="*i32", gw_ptr="*fp32", **ints_b),
                 dict(BLOCK_ROWS=conv.rows_b, BLOCK_D=conv.d, BLOCK_CK=conv.ck_w, **cc), conv.num_warps),
                (label, tc._conv_gelu_mean_bwd_x_kernel,
                 dict(w_ptr=P, gh_ptr=P, offs_ptr="*i32", gx_ptr="*fp32", **ints_b),
                 dict(BLOCK_ROWS=conv.rows_b, BLOCK_D=conv.d, BLOCK_R=conv.r, **cc), conv.num_warps)]
        cases += [
            ("default", cr._mcr_stats_kernel, dict(s1_ptr=P, t1_ptr=P, s2_ptr=P, t2_ptr=P, gram_ptr="*fp32",
                                                   cos_ptr="*fp32", m="i32", p="i32", rows_per_split="i32",
                                                   n_tiles="i32", cos_eps="fp32"),
             dict(BLOCK_M=mcr.rows, BLOCK_P=mcr.p, PRECISION=prec), mcr.num_warps),
            ("default", cr._mcr_grad_kernel, dict(s_ptr=P, t_ptr=P, tu_ptr=P, minv_ptr="*fp32", gs_ptr=P,
                                                  w_ptr="*fp32", m="i32", p="i32", cos_eps="fp32"),
             dict(BLOCK_M=mcr.rows, BLOCK_P=mcr.p, PRECISION=prec), mcr.num_warps),
        ]
        fused, warps = fused_compile_cases(P, dot, prec)
        cases += [(*case, warps) for case in fused]
        for label, fn, sig, consts, warps in cases:
            src = ASTSource(fn, {**sig, **{k: "constexpr" for k in consts}}, constexprs=consts,
                            attrs=_jit_attrs(fn, sig))
            k = triton.compile(src, target=target, options={"num_warps": warps})
            smem = k.metadata.shared
            if smem > 227 * 1024:
                raise SystemExit(f"{fn.__name__} ({dt}/{prec}, tiles {label}) needs {smem} B of shared memory "
                                 f"> H100's 227 KiB")
            piped = "pipelined" if "async_copy_global_to_local" in k.asm["ttgir"] else "not pipelined"
            print(f"sm_90 {fn.__name__:36s} {dt}/{prec:4s} tiles {label:20s} ok, shared memory {smem // 1024:4d} KiB, "
                  f"{_ptxas_usage(k.asm['ptx'])}, {piped}", flush=True)


def sweep_conv(dtype, iters, device="cuda", shape=None, rows=None):
    """The tokenizer conv at every tile variant of conv_sweep -> `rows` (appended to as each variant
    finishes, so a caller stopped by a deadline keeps the finished ones): [(label, {output, weight,
    bias: error}, bench_conv's [(case, result)] for fwd and fwd+bwd)]; the reference is timed with
    the first variant only. Errors are max |Triton − reference| / max |reference| on 29 crops (a
    ragged last row tile at 32, 64 and 128 rows) under a random upstream gradient, so that a fast
    but wrong variant shows."""
    from kernels.composed import grouped_conv_gelu_mean_reference
    from kernels.tokenizer_conv import grouped_conv_gelu_mean_triton
    sh = {**PAPER_CONV, **(shape or {})}
    counts = sh["counts"] or network_counts()
    (x, w, b), offsets = conv_inputs(29, counts, sh["T"], sh["K"], sh["D"], dtype, device, grad_x=False)
    g = torch.randn(29, len(counts), sh["T"] // sh["L"], sh["D"], device=device, dtype=dtype)

    def out_and_grads(f):
        y = f(x, w, b, offsets, sh["L"])
        return [t.float() for t in (y, *torch.autograd.grad(y, (w, b), g))]

    ref = out_and_grads(grouped_conv_gelu_mean_reference)
    rows = [] if rows is None else rows
    for i, (label, blocks) in enumerate(conv_sweep()):
        got = out_and_grads(lambda *a: grouped_conv_gelu_mean_triton(*a, blocks=blocks))
        err = {k: ((u - r).abs().max() / r.abs().max()).item() for k, u, r in zip(("output", "weight", "bias"), got, ref)}
        print(f"tiles {label}: max |Triton - reference| / max |reference|: "
              + ", ".join(f"{k} {e:.1e}" for k, e in err.items()), flush=True)
        rows.append((label, err, bench_conv(dtype, iters, False, blocks, device=device, shape=shape, reference=i == 0)))
    return rows


def sweep_table(rows, tol):
    """sweep_conv's rows -> (Markdown table naming the fastest right variant, whether any variant is
    wrong: an error above `tol` or no Triton time). The reference's times are the first row's."""
    nan = (float("nan"), 0)
    ref = [res.get("ref", nan)[0] for _, res in rows[0][2]] if rows else [float("nan")] * 2
    lines = ["| tiles | fwd ms (Triton) | fwd+bwd ms (Triton) | fwd+bwd speed-up | error output / weight / bias |",
             "|---|---|---|---|---|", f"| (reference) | {ref[0]:.2f} | {ref[1]:.2f} | | |"]
    good, wrong = [], False
    for label, err, cases in rows:
        tf, tb = (res.get("triton", nan)[0] for _, res in cases)
        bad = not (max(err.values()) <= tol and tb == tb)          # NaN time: the variant failed to run
        wrong |= bad
        if not bad:
            good.append((tb, label))
        lines.append(f"| {label} | {tf:.2f} | {tb:.2f} | {ref[1] / tb:.2f}× | "
                     + " / ".join(f"{e:.1e}" for e in err.values()) + (" **WRONG**" if bad else "") + " |")
    best = f"tiles {min(good)[1]}" if good else "none (no variant ran right)"
    lines += ["", f"Fastest right fwd+bwd: {best} (the default is kernels.tokenizer_conv.ConvBlocks()). Errors: "
              f"max |Triton − reference| / max |reference| (allowed: {tol:g}); no Triton time counts as wrong."]
    return "\n".join(lines) + "\n", wrong


def _conv_blocks(text):
    """argparse type of --conv-blocks: "rows=128,d=128" -> ConvBlocks with those fields changed."""
    from kernels.tokenizer_conv import ConvBlocks
    fields = [f.name for f in dataclasses.fields(ConvBlocks)]
    try:
        changes = {k.strip(): int(v) for k, v in (kv.split("=") for kv in text.split(",") if kv.strip())}
    except ValueError:
        changes = None
    if changes is None or any(k not in fields for k in changes) or any(v < 1 for v in changes.values()):
        raise argparse.ArgumentTypeError(f"{text!r}: give field=positive integer pairs, comma-separated, "
                                         f"fields from {', '.join(fields)}")
    return dataclasses.replace(ConvBlocks(), **changes)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), help="default fp32 (--compile-check: all)")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (reference and kernels alike)")
    ap.add_argument("--iters", type=positive_int, default=20)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile reference")
    ap.add_argument("--only", choices=("conv", "mcr", "tokenizer"), help="run one kernel's cases")
    ap.add_argument("--conv-blocks", default=None, type=_conv_blocks, metavar="rows=128,d=128",
                    help="override tokenizer-conv tiles (fields of kernels.tokenizer_conv.ConvBlocks)")
    ap.add_argument("--sweep", action="store_true",
                    help="time the tokenizer conv at each tile variant of conv_sweep (with --compile-check: "
                         "compile each)")
    ap.add_argument("--compile-check", action="store_true", help="compile all kernels for sm_90 and exit")
    args = ap.parse_args(argv)
    if args.compile_check:
        return compile_check(args.dtype, args.sweep)
    if not torch.cuda.is_available():
        print("bench/kernels.py: no CUDA device; nothing to time (the Triton interpreter is not a benchmark).")
        return
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    args.dtype = args.dtype or "fp32"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    print(f"{torch.cuda.get_device_name()} | dtype {args.dtype} | tf32 {args.tf32} | median of {args.iters}")
    torch.manual_seed(0)
    if args.sweep:
        rows = sweep_conv(dtype, args.iters)
        print(sweep_table(rows, tol=2e-2 if dtype == torch.bfloat16 else 1e-3)[0])
        return
    if args.only in (None, "conv"):
        blocks = args.conv_blocks or _conv_blocks("")
        print(f"tokenizer-conv tiles: {blocks}")
        bench_conv(dtype, args.iters, not args.no_compile, blocks)
    if args.only in (None, "mcr"):
        bench_mcr(dtype, args.iters, not args.no_compile)
    if args.only in (None, "tokenizer"):
        from bench.tokenizer_paths import bench_tokenizer
        bench_tokenizer(dtype, args.iters)


if __name__ == "__main__":
    main()

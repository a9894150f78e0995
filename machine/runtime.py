"""The runtime the model runs on: which device, what the CPU can do, which precision, CPU tweaks.

Everything that depends on the machine rather than on the method lives here, so that training,
probing and the benchmarks make the same choices:

- `resolve_device("auto", local_rank)`: CUDA when there is a GPU (this process's: cuda:<local_rank>,
  for "cuda" too), else the CPU.
- `setup_distributed(device)`: this process's rank, the world size (torchrun's environment) and its
  device; joins the process group when there are several.
- `cpu_bf16_feature()`: does this CPU multiply bfloat16 natively
  (AVX512_BF16 or AMX-BF16)? Read from /proc/cpuinfo on Linux, from CPUID through torch's cpuinfo
  elsewhere; never guessed from the vendor or model name.
- `resolve_precision(choice, device) -> (precision, reason)` for `--precision {auto,fp32,bf16}`:
  CUDA runs bf16 autocast; a CPU runs bf16 autocast only where it has native bf16 (there a bf16
  GEMM is several times faster than fp32; elsewhere bf16 is emulated and slower), fp32 otherwise.
  The losses' statistics stay fp32 in every case (losses._exact).
- `autocast(device, precision)`: the one autocast context that training and probing use.
- `resolve_compile(choice, device)`: `--compile {auto,on,off}`; auto compiles on CUDA only.
- `tune_cpu(device)`: flush denormals, and on a CPU run keep freed memory in the heap.

    python -m machine.runtime   # print what this machine gets for --precision auto and --compile auto
"""
import contextlib
import ctypes
import os
import sys
import warnings

import torch
import torch.distributed as dist

PRECISIONS = ("auto", "fp32", "bf16")
COMPILE_CHOICES = ("auto", "on", "off")
LACKS_BF16 = "CPU lacks native bf16 (no AVX512_BF16/AMX)"
# /proc/cpuinfo flag -> the name we print. AMX-BF16 needs the AMX tiles too (amx_tile), which the
# kernel lists only when it has enabled them for user space.
_BF16_FLAGS = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512_BF16"))


def resolve_device(name="auto", local_rank=0) -> torch.device:
    """'auto' -> cuda:<local_rank> if a GPU is available else cpu; 'cuda' -> cuda:<local_rank> (under
    torchrun each process takes its own GPU, not all of them cuda:0); otherwise the named device.
    A CUDA device the machine does not have is a clear ValueError."""
    try:
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ValueError(f"--device {name} requested, but this machine has no CUDA device; use --device cpu")
    index, n = (local_rank if device.index is None else device.index), torch.cuda.device_count()
    if index >= n:
        why = f" (the GPU of LOCAL_RANK {local_rank})" if device.index is None else ""
        raise ValueError(f"--device {name}: cuda:{index}{why} does not exist; this machine has {n} CUDA "
                         f"device(s), cuda:0 to cuda:{n - 1}")
    return torch.device("cuda", index)


def setup_distributed(device_arg="auto"):
    """-> (rank, world size, device) from torchrun's RANK / WORLD_SIZE / LOCAL_RANK (a plain run: 0, 1).
    Each process takes GPU LOCAL_RANK under "auto" and "cuda"; several processes join one group (NCCL on CUDA,
    gloo on the CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_arg, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def _cpuinfo_flags(path="/proc/cpuinfo"):
    """The CPU flags Linux reports (first processor), or None where the file is missing/unreadable."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def cpu_bf16_feature(cpuinfo="/proc/cpuinfo"):
    """The name of this CPU's native bf16 matrix instructions ('AMX-BF16', 'AVX512_BF16'), or None.

    Linux: /proc/cpuinfo's flags (they also say whether the kernel enabled AMX). Elsewhere, or if
    the file cannot be read: torch's CPUID-based checks (torch.cpu._is_*_supported, private but
    present since torch 2.1). torch.backends.cpu.get_cpu_capability() is not used: it says
    'AVX512' for AVX-512 CPUs with and without bf16 alike."""
    flags = _cpuinfo_flags(cpuinfo) if sys.platform.startswith("linux") else None
    if flags is not None:
        if "amx_bf16" in flags and "amx_tile" not in flags:
            flags = flags - {"amx_bf16"}
        return next((name for flag, name in _BF16_FLAGS if flag in flags), None)
    probe = getattr(torch, "cpu", None)
    try:
        if getattr(probe, "_is_amx_tile_supported", lambda: False)():
            return "AMX-BF16"
        if getattr(probe, "_is_avx512_bf16_supported", lambda: False)():
            return "AVX512_BF16"
    except RuntimeError:  # cpuinfo could not initialise: say no rather than guess
        return None
    return None


def resolve_precision(choice, device):
    """--precision auto|fp32|bf16 on `device` -> ('fp32' or 'bf16', a short reason to print).

    CUDA: bf16 autocast unless fp32 is asked for. CPU: auto gives bf16 iff the CPU has native bf16;
    an explicit bf16 on a CPU without it is honoured with a warning (it is emulated, hence slow).
    Other devices (mps, ...): fp32 unless bf16 is asked for."""
    if choice not in PRECISIONS:
        raise ValueError(f"--precision {choice!r}: choose one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if choice == "fp32":
        return "fp32", "asked for fp32"
    if device.type == "cuda":
        return "bf16", "asked for bf16" if choice == "bf16" else "CUDA GPU: bf16 autocast"
    if device.type != "cpu":
        return ("bf16", "asked for bf16") if choice == "bf16" else ("fp32", f"no bf16 default on {device.type}")
    feature = cpu_bf16_feature()
    if feature:
        return "bf16", ("asked for bf16; " if choice == "bf16" else "") + f"CPU has {feature}"
    if choice == "bf16":
        warnings.warn("--precision bf16 on a CPU without native bf16 (no AVX512_BF16/AMX): it runs emulated, "
                      "typically slower than fp32", RuntimeWarning, stacklevel=2)
        return "bf16", f"asked for bf16; {LACKS_BF16}, so it will be slow"
    return "fp32", LACKS_BF16


def autocast(device, precision):
    """bf16 autocast on `device` when precision is 'bf16', else a no-op context (fp32).
    CPU autocast casts matmuls, convs, linear, bmm/addmm and attention to bf16; norms, GELU and
    reductions run in the dtype they receive; the losses leave autocast for fp32 (losses._exact)."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16' (resolve 'auto' first), got {precision!r}")
    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def no_autocast(device):
    """Leave any enclosing autocast (the losses' fp32 statistics). A no-op on devices that have no
    autocast, such as "meta", on which the tests trace a whole step without running it."""
    kind = torch.device(device).type
    return torch.autocast(kind, enabled=False) if torch.amp.is_autocast_available(kind) else contextlib.nullcontext()


def resolve_compile(choice, device):
    """--compile auto|on|off on `device` -> (compile?, reason). auto: on for CUDA (launch overhead and
    fusion pay there), off on the CPU (compiling takes minutes and the CPU step is GEMM-bound)."""
    if choice not in COMPILE_CHOICES:
        raise ValueError(f"--compile {choice!r}: choose one of {', '.join(COMPILE_CHOICES)}")
    if choice != "auto":
        return choice == "on", f"asked for --compile {choice}"
    on = torch.device(device).type == "cuda"
    return on, "auto: on for CUDA" if on else "auto: off on the CPU"


def keep_freed_memory():
    """Make glibc keep freed blocks for reuse instead of returning them to the OS.

    A CPU training step allocates and frees hundreds of MB of activations. By default glibc
    serves large blocks with fresh mmap()s and hands them back on free, so every step pays
    ~40,000 page faults (zero-filling pages) again: 30-40% of the tokenizer's time on our 2-core
    test machine. Raising the mmap and trim thresholds keeps those pages in the heap. No-op
    off glibc (macOS, musl)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3          # mallopt parameter ids (malloc.h)
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
    libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1)


def tune_cpu(device="cpu", keep_memory=True):
    """CPU-side settings for a run on `device`. Denormals are flushed always: tiny weights/moments
    late in training become denormal floats, which make CPU elementwise ops (GELU, AdamW, EMA) 10x
    slower; flushing them to zero changes nothing measurable. Freed memory is kept for CPU runs
    (keep_memory=False: bench/train_step.py --default-malloc measures what that saves)."""
    torch.set_flush_denormal(True)
    if torch.device(device).type == "cpu" and keep_memory:
        keep_freed_memory()


def describe(device="auto"):
    """One line: device, its bf16 capability, and what auto picks (for logs and benchmark rows)."""
    device = resolve_device(device)
    prec, why = resolve_precision("auto", device)
    comp, cwhy = resolve_compile("auto", device)
    cpu = f"CPU bf16: {cpu_bf16_feature() or 'none'}, {os.cpu_count()} cores"
    return f"device {device}; {cpu}; precision auto -> {prec} ({why}); compile auto -> {'on' if comp else 'off'} ({cwhy})"


if __name__ == "__main__":
    print(describe())

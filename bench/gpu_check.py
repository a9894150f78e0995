"""One prepared command for the first time a GPU is at hand: everything issue 12 asks of a GPU,
in ≤ 8 minutes on one H100, written up as one Markdown report ready for BENCHMARKS.md.

    python bench/gpu_check.py                      # on the GPU machine; writes gpu_check.md
    python bench/gpu_check.py --out report.md --stages step,pretrain
    python bench/gpu_check.py --dry-run            # same code paths, tiny shapes, on the CPU (< 60 s)

Stages, each with its own time budget (a stage that fails or overruns is recorded as such and the
next one runs; the budgets add up to 8 minutes):

  parity    the CUDA parity tests (pytest tests/test_kernels.py -k cuda, TRITON_INTERPRET=0: compiled
            kernels against their references; the suite's conftest would otherwise select the interpreter)
  kernels   both kernels against their PyTorch references at paper shapes, fp32 and bf16
            (bench/kernels.py; triton.testing.do_bench); then the tokenizer op by each path in bf16
            (factored, composed, the conv kernel, the fused factored kernel): the fastest right
            fwd+bwd is what kernels.CUDA_DEFAULT should say; a fused kernel off the
            factored path by more than bf16 rounding fails the stage
  step      the paper-preset step at batch 512 in five modes taking turns (eager; compiled with --kernels
            auto, triton and fused; compiled with activation checkpointing): median, peak memory, the projected
            time of 7,600 steps, the first losses of each (they must agree with eager), and the
            device-to-host syncs of one eager step with the lines that caused them (torch.cuda.set_sync_debug_mode)
  probe     probe feature throughput (bench/probe.py)
  pretrain  the first 300 steps of the paper's 7,600-step schedule on a UK-Biobank-sized synthetic cohort
            (39,139 scans, one per subject) held in GPU memory, checked against SPEC §8's sanity ranges:
            L_CLS falls, the teacher's projection std does not shrink towards 0, the CLS does not
            collapse, no NaN
  tiles     the tokenizer conv kernel (bf16, paper shapes) at each tile variant of bench/kernels.py's
            conv_sweep: error against the reference, forward and fwd+bwd time, the fastest variant

Exit status 1 when any stage fails: an exception, an overrun, a parity test failing or skipped on
a GPU, eager and compiled losses disagreeing, a sanity range missed, or a tile variant off the
reference by more than bf16 rounding. Targets (≤ 20 min and
≤ 10 GB for the paper run, kernels ≥ 2× their references) are reported as met or missed, not failed.

--dry-run: the CPU, Triton through its interpreter (kernels) or the PyTorch reference (model),
tiny shapes, a handful of steps, and torch.compile with the "aot_eager" backend (Dynamo and AOT
autograd trace the step, graph breaks included; Inductor's code generation takes minutes on a CPU,
so it is left to the GPU run). tests/test_gpu_check.py runs it, so this script cannot rot.
"""
import argparse
import os
import subprocess
import sys
import time
import traceback

if "--dry-run" in sys.argv:   # before any kernel module is imported: @triton.jit reads it then
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from machine import fileio  # noqa: E402
import kernels  # noqa: E402
from data import networks  # noqa: E402
from machine import runtime  # noqa: E402
from bench import kernels as bench_kernels  # noqa: E402
from bench.probe import preset_encoder, time_features  # noqa: E402
from bench.report import cpu_name, random_scans, synthetic_pool  # noqa: E402
from bench.tokenizer_paths import bench_tokenizer, tokenizer_table  # noqa: E402
from bench.train_step import host_syncs, make_trainer, time_steps, timed_step  # noqa: E402

PAPER_STEPS = 7600                      # SPEC §8: 100 epochs of 39,139 scans at batch 512
UKB_SCANS = 39139
TARGET_MIN, TARGET_GIB, TARGET_KERNEL = 20.0, 10.0, 2.0
SMALL_MAP = np.repeat(np.arange(4), 10)  # dry run: 40 ROIs in 4 networks


class StageTimeout(Exception):
    pass


class StageFailed(Exception):
    """A check inside a stage failed; the stage's report so far is kept."""


class Plan:
    """What the stages run: paper shapes on the GPU, tiny ones on the CPU (--dry-run)."""

    def __init__(self, dry):
        self.dry = dry
        self.device = torch.device("cpu") if dry else runtime.resolve_device("cuda")
        if dry:
            self.preset, self.model = "demo", dict(dim=32, depth=1, heads=2, proj_hidden=64)
            self.map, self.batch, self.timed = SMALL_MAP, 8, 2
            self.conv = dict(B=1, counts=(3, 2), T=40, D=8)
            self.tokenizer = dict(B=1, counts=(3, 2), T=10, L=5, D=8)
            self.mcr_m, self.mcr_p, self.kernel_iters = (16,), 8, 1
            self.probe_scans, self.probe_batch = 4, 16
            # a 30-step run of its own: the paper schedule's first 30 steps barely leave lr = 0
            self.pool, self.pool_len, self.pretrain_steps, self.log_every = 64, 120, 30, 10
            self.pretrain_schedule = 30
            self.backend = "aot_eager"
            self.budget = dict(parity=60, kernels=60, step=60, probe=20, pretrain=40, tiles=60)
        else:
            self.preset, self.model = "paper", {}
            self.map, self.batch, self.timed = networks.default_network_map(), 512, 5
            self.conv, self.mcr_m, self.mcr_p, self.kernel_iters = None, (512, 4608), 128, 20
            self.tokenizer = None
            self.probe_scans, self.probe_batch = 512, 512
            # 39,139 x 457 x 160 float16 = 5.7 GB in GPU memory; 160 points = 1.6 crops of 100
            self.pool, self.pool_len, self.pretrain_steps, self.log_every = UKB_SCANS, 160, 300, 25
            # the first 300 steps of the paper's 7,600 (warm-up 228 steps). Squeezing all schedules into
            # 300 steps (warm-up 9) collapsed the teacher within 50 steps on an H100, in fp32 and
            # without kernels alike (BENCHMARKS.md, GPU check), so that is not a check of our code
            self.pretrain_schedule = PAPER_STEPS
            self.backend = "inductor"
            # 480 s in all (last H100 run: parity 29 s, kernels 13, step 142 with three compiled modes,
            # probe 2, pretrain 52); each compiled mode compiles 4 graphs (masked or not, student, teacher).
            # kernels: +25 s for the tokenizer paths (JIT of the fused kernels, not timed yet), from
            # probe and pretrain's margins
            self.budget = dict(parity=45, kernels=70, step=230, probe=10, pretrain=65, tiles=60)


# ----------------------------------------------------------------------------------------------
# stages: each takes the plan and returns Markdown; raises StageFailed (with its Markdown) on a failed check

def stage_parity(plan):
    env = {**os.environ, "TRITON_INTERPRET": "1" if plan.dry else "0"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_kernels.py", "-k", "cuda"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=plan.budget["parity"])
    summary = (r.stdout.strip().splitlines() or ["(no output)"])[-1]
    count = {k: int(n) for n, k in (w.split() for w in _summary_counts(summary))}
    md = f"`TRITON_INTERPRET={env['TRITON_INTERPRET']} python -m pytest -q tests/test_kernels.py -k cuda`: **{summary}**\n"
    if r.returncode not in (0, 5) or count.get("failed") or count.get("error"):
        raise StageFailed(md + "\n```\n" + r.stdout[-3000:] + r.stderr[-1000:] + "\n```\n")
    if not plan.dry and (count.get("skipped") or not count.get("passed")):
        raise StageFailed(md + "\nOn a GPU every CUDA test must run and pass.\n")
    return md


def _summary_counts(line):
    """'4 passed, 2 skipped in 3.1s' -> ['4 passed', '2 skipped']."""
    words = line.replace("=", " ").replace(",", " ").split()
    return [f"{words[i - 1]} {w}" for i, w in enumerate(words)
            if i and w in ("passed", "failed", "skipped", "error", "errors", "deselected") and words[i - 1].isdigit()]


def stage_kernels(plan):
    lines = ["| case | dtype | reference ms | Triton ms | speed-up | peak MiB (ref / Triton) | ≥ 2× |",
             "|---|---|---|---|---|---|---|"]
    dts = {"fp32": torch.float32, "bf16": torch.bfloat16}
    with kernels.enabled(True):
        for name, dt in dts.items():
            rows = (bench_kernels.bench_conv(dt, plan.kernel_iters, False, device=plan.device, shape=plan.conv)
                    + bench_kernels.bench_mcr(dt, plan.kernel_iters, False, plan.device, plan.mcr_m, plan.mcr_p))
            for case, res in rows:
                (rm, rmb), (tm, tmb) = res.get("ref", (float("nan"), 0)), res.get("triton", (float("nan"), 0))
                lines.append(f"| {case} | {name} | {rm:.3f} | {tm:.3f} | {rm / tm:.2f}× | {rmb:.0f} / {tmb:.0f} | "
                             f"{'yes' if rm / tm >= TARGET_KERNEL else 'no'} |")
    lines += _tokenizer_paths(plan)
    note = "\n(dry run: the Triton interpreter on the CPU; its times mean nothing)\n" if plan.dry else ""
    md = "\n".join(lines) + "\n" + note
    if "WRONG" in md:
        raise StageFailed(md)
    return md


def _tokenizer_paths(plan):
    """bench_tokenizer in bf16 (the GPU's training dtype) as Markdown lines (bf16 rounding allowed)."""
    return tokenizer_table(*bench_tokenizer(torch.bfloat16, plan.kernel_iters, plan.device, plan.tokenizer),
                           tol=2e-2)


def _trainer(plan, compile, scans, **overrides):
    return make_trainer(plan.preset, plan.batch, plan.device, "auto", compile, scans=scans, network_map=plan.map,
                        compile_backend=plan.backend, **plan.model, **overrides)


def _warmup_steps(tr, at_least=2):
    """Steps to run untimed so that both kinds of batch (masked and not) have been compiled."""
    kinds, i = set(), 0
    while len(kinds) < 2 or i < at_least:
        kinds.add(tr.masked_at(i))
        i += 1
    return i


class _InMode:
    """A trainer whose every step runs in one kernels mode (kernels/__init__.py): the mode is global,
    and the trainers of the step stage take turns step by step."""

    def __init__(self, tr, mode):
        self.tr, self.mode = tr, mode

    def step(self, i):
        with kernels.mode(self.mode):
            return self.tr.step(i)

    def __getattr__(self, name):
        return getattr(self.tr, name)


# mode: (torch.compile, --kernels, activation checkpointing). "auto" is the measured CUDA default
# (kernels.CUDA_DEFAULT): the other kernels modes are timed beside it so that this run can change it.
MODES = {"eager": ("off", "auto", False), "compiled (--kernels auto)": ("on", "auto", False),
         "compiled, --kernels triton": ("on", "triton", False),
         "compiled, --kernels fused": ("on", "fused", False),
         "compiled, activation checkpointing": ("on", "auto", True)}


def stage_step(plan):
    scans = random_scans(2 * plan.batch, n_rois=len(plan.map))
    trs = {}
    for k, (compile, mode, recompute) in MODES.items():
        # a dry run's model runs the PyTorch paths in every mode: the interpreter would take minutes
        trs[k] = _InMode(_trainer(plan, compile, scans, grad_checkpoint=recompute), "pytorch" if plan.dry else mode)
    first = {k: [timed_step(tr, i)[1] for i in range(2)] for k, tr in trs.items()}   # same init, same batches
    warm = _warmup_steps(trs["eager"])      # from step 0 again: every compiled variant exists before timing
    times, peak = time_steps(trs, warm, plan.timed)
    tr = trs["eager"]
    lines = [f"Preset {plan.preset}, batch {plan.batch}, {tr.precision} ({tr.precision_reason}); compiled: "
             f"torch.compile backend {plan.backend}; median of {plan.timed} steps after {2 + warm} untimed "
             f"(masked and unmasked variants compiled by then); the modes take turns step by step.", "",
             "| mode | median s/step | samples/s | peak GPU memory | projected 7,600 steps | ≤ 20 min | ≤ 10 GB |",
             "|---|---|---|---|---|---|---|"]
    for k, t in times.items():
        # all trainers live on the GPU: the others' weights, optimizer state and data are not this one's
        other = sum(_state_bytes(o) for j, o in trs.items() if j != k)
        med, gib = float(np.median(t)), (peak[k] - other) / 2 ** 30
        proj = med * PAPER_STEPS / 60
        mem = f"{gib:.1f} GiB" if plan.device.type == "cuda" else "n/a (CPU)"
        lines.append(f"| {k} | {med:.3f} | {plan.batch / med:.0f} | {mem} | {proj:.1f} min | "
                     f"{'yes' if proj <= TARGET_MIN else 'no'} | {'yes' if gib <= TARGET_GIB else 'no'} |")
    lines += ["", _compare_losses(first), "", host_syncs(trs["eager"], warm + plan.timed)]
    md = "\n".join(lines) + "\n"
    if "DISAGREE" in md:
        raise StageFailed(md)
    return md


def _state_bytes(tr):
    """Bytes a trainer holds between steps: weights and gradients of student and teacher, AdamW's
    moments, the resident training data."""
    ts = [*tr.student.parameters(), *tr.teacher.parameters()]
    ts += [p.grad for p in tr.student.parameters() if p.grad is not None]
    ts += [t for st in tr.opt.state.values() for t in st.values() if torch.is_tensor(t)]
    ts += [tr.batches._data] if getattr(tr.batches, "_data", None) is not None else []
    return sum(t.numel() * t.element_size() for t in ts)


def _compare_losses(first):
    """Every mode against eager on the same first two steps: bf16 rounding differs with fusion and
    between the kernels and the PyTorch paths, so ~1e-2."""
    modes = [k for k in first if k != "eager"]
    out = ["| step | eager loss / cls | " + " | ".join(f"{k} loss / cls" for k in modes) + " | agree |",
           "|---|---|" + "---|" * len(modes) + "---|"]
    for i, a in enumerate(first["eager"]):
        bs = [first[k][i] for k in modes]
        ok = all(abs(a[k].item() - b[k].item()) <= 0.02 * abs(a[k].item()) + 0.01 for b in bs for k in ("loss", "cls"))
        out.append(f"| {i} | {a['loss'].item():+.4f} / {a['cls'].item():+.4f} | "
                   + " | ".join(f"{b['loss'].item():+.4f} / {b['cls'].item():+.4f}" for b in bs)
                   + f" | {'yes' if ok else 'DISAGREE'} |")
    return "\n".join(out)



def stage_probe(plan):
    enc = preset_encoder(plan.preset, plan.device, network_map=plan.map,
                         **{k: v for k, v in plan.model.items() if k != "proj_hidden"})
    scans = random_scans(plan.probe_scans, n_rois=len(plan.map))
    prec = runtime.resolve_precision("auto", plan.device)[0]
    dt = float(np.median(time_features(enc, scans, plan.device, plan.probe_batch, prec, repeats=3)))
    crops = 8 * plan.probe_scans
    return (f"{crops} crops ({plan.probe_scans} scans x 8), batch {plan.probe_batch}, {prec}: "
            f"median {dt:.3f} s, **{crops / dt:.0f} crops/s** (whole pipeline: crops, z-scoring, encoder).\n")



def stage_tiles(plan):
    """Every tile variant of bench/kernels.py's conv_sweep, bf16, checked and timed; one off by more
    than bf16 rounding, or that fails to run, fails the stage (the kernel must be right at any tiles).
    Stopped by its budget, the stage reports the variants that finished."""
    rows, stopped = [], ""
    try:
        with kernels.enabled(True):
            bench_kernels.sweep_conv(torch.bfloat16, plan.kernel_iters, plan.device, plan.conv, rows=rows)
    except StageTimeout:
        stopped = f"\nStopped by its budget after {len(rows)} of {len(bench_kernels.conv_sweep())} variants.\n"
    md, wrong = bench_kernels.sweep_table(rows, tol=2e-2)
    md += stopped + ("\n(dry run: the Triton interpreter on the CPU; its times mean nothing)\n" if plan.dry else "")
    if wrong or stopped:
        raise StageFailed(md)
    return md


def stage_pretrain(plan, deadline):
    t0 = time.time()
    scans = synthetic_pool(plan.pool, plan.map, plan.pool_len, plan.device)
    made = time.time() - t0
    tr = _trainer(plan, "off", scans, steps=plan.pretrain_schedule)
    rows, acc = [], []
    for i in range(plan.pretrain_steps):
        if time.time() > deadline - 5:       # keep what was logged; the checks say if it was enough
            break
        r = tr.step(i)
        acc.append(torch.stack([r[k].detach().float() for k in ("loss", "cls", "tok", "std_t", "cos_t")]))
        if (i + 1) % plan.log_every == 0:
            rows.append((i + 1, torch.stack(acc).mean(0).tolist()))   # one sync per log window
            acc = []
    md = [f"{len(scans)} synthetic scans x {scans.n_rois} ROIs x {plan.pool_len} points "
          f"({'held in ' + plan.device.type.upper() + ' memory as float16' if tr.batches.resident else 'read per batch'}; "
          f"made in {made:.0f} s), "
          f"preset {plan.preset}, batch {plan.batch}, {tr.precision}, eager; the first {len(rows) * plan.log_every} "
          f"steps of a {plan.pretrain_schedule}-step schedule (warm-up {tr.warmup} steps, peak lr {tr.peak_lr:.2e}).", "",
          "| step | loss | L_CLS | L_Tok (window mean, 0 on unmasked batches) | teacher std | teacher CLS cos |",
          "|---|---|---|---|---|---|"]
    md += [f"| {s} | {v[0]:+.3f} | {v[1]:+.3f} | {v[2]:+.3f} | {v[3]:.4f} | {v[4]:.3f} |" for s, v in rows]
    checks = _sanity(rows)
    md += ["", "SPEC §8 sanity checks:"] + [f"- {'ok' if ok else 'FAILED'}: {what}" for what, ok in checks]
    if not all(ok for _, ok in checks):
        raise StageFailed("\n".join(md) + "\n")
    return "\n".join(md) + "\n"


def _sanity(rows):
    """[(what, ok)] for the logged windows [(step, [loss, cls, tok, std_t, cos_t])]."""
    if len(rows) < 2:
        return [("at least two log windows ran", False)]
    v = np.array([r[1] for r in rows])
    return [("no NaN/inf in any logged loss or monitor", bool(np.isfinite(v).all())),
            (f"L_CLS falls: {v[0, 1]:+.3f} -> {v[-1, 1]:+.3f}", bool(v[-1, 1] < v[0, 1] - 0.05)),
            (f"teacher projection std does not shrink towards 0: {v[0, 3]:.4f} -> {v[-1, 3]:.4f}",
             bool(v[-1, 3] >= 0.5 * v[0, 3] and v[-1, 3] > 0.005)),
            (f"teacher CLS not collapsed (mean pairwise cos {v[-1, 4]:.3f} < 0.99)", bool(v[-1, 4] < 0.99))]


STAGES = (("parity", "CUDA parity tests"), ("kernels", "Kernels vs PyTorch references"),
          ("step", "Paper-preset training step"), ("probe", "Probe feature throughput"),
          ("pretrain", "Short pretraining on a UK-Biobank-sized synthetic cohort"),
          ("tiles", "Tokenizer conv kernel tiles"))


# ----------------------------------------------------------------------------------------------
# runner

def _alarm(seconds):
    """Raise StageTimeout in the main thread after `seconds` (0 cancels); no-op without SIGALRM."""
    import signal
    if not hasattr(signal, "setitimer"):
        return

    def fire(*_):
        raise StageTimeout()
    signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(0.0, seconds))


def run_stage(name, plan):
    """-> (status, seconds, Markdown body). A stage never stops the run."""
    budget = plan.budget[name]
    t0 = time.time()
    fn = {"parity": stage_parity, "kernels": stage_kernels, "step": stage_step, "probe": stage_probe,
          "pretrain": lambda p: stage_pretrain(p, t0 + budget), "tiles": stage_tiles}[name]
    _alarm(budget)
    try:
        body, status = fn(plan), "pass"
    except StageFailed as e:
        body, status = str(e), "FAIL"
    except (StageTimeout, subprocess.TimeoutExpired):
        body, status = f"Stopped after its budget of {budget} s.\n", "TIMEOUT"
    except Exception as e:  # noqa: BLE001 -- record any crash and go on with the next stage
        tb = traceback.format_exc(limit=6)
        body, status = f"{type(e).__name__}: {str(e)[:1500]}\n\n```\n{tb[-2500:]}```\n", "ERROR"
        if "StageTimeout" in tb:   # the alarm went off inside a library that wrapped it (torch.compile does)
            body, status = f"Stopped after its budget of {budget} s (inside {type(e).__name__}).\n", "TIMEOUT"
    finally:
        _alarm(0)
        if plan.device.type == "cuda":
            torch.cuda.empty_cache()
    return status, time.time() - t0, body


def header(plan, argv):
    dev = torch.cuda.get_device_name(plan.device) if plan.device.type == "cuda" else f"CPU {cpu_name()}"
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        rev = "?"
    import triton
    return (f"## GPU check{' (DRY RUN on the CPU: tiny shapes, times mean nothing)' if plan.dry else ''}: "
            f"{dev}, {time.strftime('%Y-%m-%d')}\n\n`python bench/gpu_check.py {' '.join(argv)}` at commit {rev} "
            f"(+ local changes); torch {torch.__version__}, triton {triton.__version__}, "
            f"CUDA {torch.version.cuda}; {runtime.describe(str(plan.device))}.\n")


def write_report(path, plan, argv, results, seconds):
    lines = [header(plan, argv), "| stage | result | time (budget) |", "|---|---|---|"]
    lines += [f"| {title} | {'pass' if st == 'pass' else '**' + st + '**'} | {s:.0f} s ({plan.budget[n]} s) |"
              for n, title, st, s, _ in results]
    lines += [f"\nTotal {seconds:.0f} s.\n"]
    for n, title, st, s, body in results:
        lines += [f"### {title}\n", body]
    with fileio.atomic_write(path, "w") as f:   # a run killed mid-write keeps the last whole report
        f.write("\n".join(lines))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_check.md", help="the Markdown report (default %(default)s)")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU: checks the script, not the GPU")
    ap.add_argument("--stages", default=",".join(s for s, _ in STAGES), help="comma list (default: all)")
    args = ap.parse_args(argv)
    wanted = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in dict(STAGES)]
    if not wanted:
        ap.error(f"--stages names no stage; choose from {', '.join(s for s, _ in STAGES)}")
    if unknown:
        ap.error(f"unknown stage(s) {unknown}; choose from {', '.join(s for s, _ in STAGES)}")
    if not args.dry_run and not torch.cuda.is_available():
        ap.error("no CUDA GPU here; --dry-run runs the same code paths on the CPU")
    plan = Plan(args.dry_run)
    runtime.tune_cpu(plan.device)
    # the model on the CPU runs the PyTorch reference (the interpreter would take minutes); the kernels
    # stage switches the kernels on for itself
    kernels.set_mode("pytorch" if plan.dry else "auto")
    if plan.dry:   # tiny ops gain nothing from a second thread, and on a busy machine each parallel
        torch.set_num_threads(1)   # region can wait a whole time slice for it (measured: 8 ms per op)
    t_all, results = time.time(), []
    for name, title in STAGES:
        if name in wanted:
            status, secs, body = run_stage(name, plan)
            print(f"gpu_check: {name}: {status} in {secs:.0f} s", flush=True)
            results.append((name, title, status, secs, body))
            write_report(args.out, plan, argv, results, time.time() - t_all)   # after each stage: a killed run keeps its report
    failed = [n for n, _, st, _, _ in results if st != "pass"]
    print(f"gpu_check: report in {args.out}; " + (f"FAILED: {', '.join(failed)}" if failed else "all stages passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""machine/runtime.py (CPU bf16 detection, --precision, --compile, devices) and the paths a GPU run takes
first, checked on a CPU: a training step under bf16 autocast, a step traced on the "meta" device
(device placement, host syncs), a step and its log window traced for host traffic, the log window's
non-finite stop, DDP's unmasked step, the Triton conv's dtype under autocast, bf16 feature extraction.
Tiny models (D 32, depth 1) on 40 ROIs in 4 networks.

    python -m pytest -q tests/test_runtime.py
"""
import json
import warnings

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import kernels
from losses import build_models, compute_losses, ema_update
from evaluation import features
from machine import runtime
import train
from training import trainer
from bench.probe import preset_encoder
from bench.report import precisions, random_scans
from bench.train_step import make_trainer
from conftest import SMALL_MAP, TINY, TINY_RUN

CPU = torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# detection and resolution

@pytest.mark.parametrize("flags, expected", [
    ("fpu sse avx2 avx512f avx512_bf16", "AVX512_BF16"),
    ("avx512f avx512_bf16 amx_bf16 amx_tile", "AMX-BF16"),
    ("avx2 amx_bf16", None),                     # AMX not enabled by the kernel (no amx_tile): no
    ("fpu sse avx2 fma avx512f", None),          # AVX-512 without bf16 (e.g. Zen 3 has no AVX-512 at all)
])
def test_cpu_bf16_feature_reads_linux_flags(flags, expected, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime.sys, "platform", "linux")
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert runtime.cpu_bf16_feature(str(info)) == expected


@pytest.mark.parametrize("platform, readable", [("darwin", True), ("linux", False)])
def test_cpu_bf16_feature_elsewhere_asks_cpuid(platform, readable, tmp_path, monkeypatch):
    """Off Linux, or with /proc/cpuinfo unreadable, torch's CPUID checks decide; never the vendor."""
    monkeypatch.setattr(runtime.sys, "platform", platform)
    path = tmp_path / "cpuinfo"
    if readable:
        path.write_text("flags\t\t: avx512_bf16\n")     # must be ignored off Linux
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert runtime.cpu_bf16_feature(str(path)) is None
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert runtime.cpu_bf16_feature(str(path)) == "AVX512_BF16"


@pytest.mark.parametrize("choice, device, feature, expected, reason", [
    ("auto", "cpu", "AVX512_BF16", "bf16", "CPU has AVX512_BF16"),
    ("auto", "cpu", "AMX-BF16", "bf16", "CPU has AMX-BF16"),
    ("auto", "cpu", None, "fp32", "CPU lacks native bf16 (no AVX512_BF16/AMX)"),
    ("fp32", "cpu", "AVX512_BF16", "fp32", "asked for fp32"),
    ("bf16", "cpu", "AVX512_BF16", "bf16", "asked for bf16; CPU has AVX512_BF16"),
    ("auto", "cuda", None, "bf16", "CUDA GPU: bf16 autocast"),
    ("fp32", "cuda", None, "fp32", "asked for fp32"),
    ("auto", "meta", "AVX512_BF16", "fp32", "no bf16 default on meta"),
])
def test_resolve_precision_table(choice, device, feature, expected, reason, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_bf16_feature", lambda *a: feature)
    assert runtime.resolve_precision(choice, device) == (expected, reason)


def test_explicit_bf16_on_a_cpu_without_it_is_allowed_with_a_warning(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_bf16_feature", lambda *a: None)
    with pytest.warns(RuntimeWarning, match="without native bf16 .* emulated"):
        prec, why = runtime.resolve_precision("bf16", "cpu")
    assert prec == "bf16" and why.endswith("so it will be slow")


@pytest.mark.parametrize("choice, device, expected", [
    ("auto", "cuda", True), ("auto", "cpu", False), ("on", "cpu", True), ("off", "cuda", False)])
def test_resolve_compile_table(choice, device, expected):
    assert runtime.resolve_compile(choice, device)[0] is expected


@pytest.mark.parametrize("call, match", [
    (lambda: runtime.resolve_precision("fp16", "cpu"), "--precision 'fp16': choose one of auto, fp32, bf16"),
    (lambda: runtime.resolve_compile("yes", "cpu"), "--compile 'yes': choose one of auto, on, off"),
    (lambda: runtime.autocast("cpu", "auto"), "resolve 'auto' first"),
    (lambda: runtime.resolve_device("gpu0"), "'gpu0' is not a device; use auto, cpu, cuda or cuda:N"),
    (lambda: precisions("fp32,fp16"), "give auto, fp32, bf16 or a comma list"),
])
def test_bad_choices_are_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_device_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA device; use --device cpu"):
        runtime.resolve_device("cuda")


@pytest.mark.parametrize("name, local_rank, expected", [
    ("auto", 0, "cuda:0"), ("auto", 3, "cuda:3"), ("cuda", 2, "cuda:2"), ("cuda:1", 3, "cuda:1"), ("cpu", 2, "cpu")])
def test_each_process_takes_its_own_gpu(name, local_rank, expected, monkeypatch):
    """Under torchrun a bare "cuda" is the process's GPU (LOCAL_RANK), as "auto" is; cuda:N stays N.
    torch.device does not touch the driver, so a CPU machine that reports 4 GPUs checks the rule."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert runtime.resolve_device(name, local_rank) == torch.device(expected)


@pytest.mark.parametrize("name, local_rank, match", [
    ("cuda:4", 0, r"--device cuda:4: cuda:4 does not exist; this machine has 4 CUDA device\(s\), cuda:0 to cuda:3"),
    ("cuda", 5, r"--device cuda: cuda:5 \(the GPU of LOCAL_RANK 5\) does not exist; this machine has 4"),
    ("auto", 4, r"--device auto: cuda:4 \(the GPU of LOCAL_RANK 4\) does not exist"),
])
def test_a_gpu_the_machine_lacks_is_a_clear_error(name, local_rank, match, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    with pytest.raises(ValueError, match=match):
        runtime.resolve_device(name, local_rank)


def test_train_cli_rejects_unknown_precision(capsys):
    with pytest.raises(SystemExit) as e:
        train.build_parser().parse_args(["--precision", "fp16"])
    assert e.value.code == 2 and "invalid choice: 'fp16'" in capsys.readouterr().err


def test_bench_cli_rejects_unknown_precision(capsys):
    from bench import train_step
    with pytest.raises(SystemExit) as e:
        train_step.main(["--precision", "fp32,fp16"])
    assert e.value.code == 2 and "give auto, fp32, bf16 or a comma list" in capsys.readouterr().err


@pytest.mark.parametrize("script, argv", [("attention", ["--crops", "0"]), ("attention", ["--repeats", "-1"]),
                                          ("probe", ["--scans", "x"]), ("train_step", ["--steps", "0"]),
                                          ("train_step", ["--threads", "0"]), ("coupling", ["--scans", "0"]),
                                          ("cohort", ["--repeats", "0"]), ("cohort", ["--n-probe", "-3"]),
                                          ("kernels", ["--iters", "0"])])
def test_bench_cli_rejects_counts_below_one(capsys, script, argv):
    import importlib
    with pytest.raises(SystemExit) as e:
        importlib.import_module(f"bench.{script}").main(argv)
    assert e.value.code == 2 and "is not a positive integer" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["rows=x", "rows", "foo=1", "d=0"])
def test_kernel_bench_rejects_bad_tiles(capsys, value):
    pytest.importorskip("triton")                    # the tiles are the Triton kernel's
    from bench import kernels as bench_kernels
    with pytest.raises(SystemExit) as e:
        bench_kernels.main(["--conv-blocks", value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "give field=positive integer pairs" in err and "fields from rows, rows_b, d" in err


def test_attention_bench_times_every_form_per_precision(capsys):
    """bench/attention.py prints a row per (form, pass) for each precision: fused and written-out in
    fp32, and also the fused form on fp32 casts in bf16 (the CPU's former bf16 path)."""
    from bench import attention
    attention.main(["--preset", "demo", "--crops", "2", "--repeats", "1", "--precision", "fp32,bf16",
                    "--no-kernels"])
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| ")]
    assert len(rows) == 2 * (2 + 3)
    assert sum("fused SDPA in fp32" in r for r in rows) == 2
    assert all(" ms | " in r and "x written-out's" in r for r in rows)


# ---------------------------------------------------------------------------------------------
# the bf16 step on a CPU

class OpDtypes(TorchDispatchMode):
    """Records the input dtypes of every aten op that runs (below autocast: what really executes)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        dts = [a.dtype for a in args if isinstance(a, torch.Tensor)]
        self.seen.append((func.overloadpacket.__name__, dts))
        return func(*args, **(kwargs or {}))

    def dtypes(self, *names):
        return {dt for name, dts in self.seen if name in names for dt in dts}


def _trainer(precision, steps_scans=16):
    scans = random_scans(steps_scans, n_rois=len(SMALL_MAP), length=120)
    with warnings.catch_warnings():   # explicit bf16 on a CPU without it warns; that is tested above
        warnings.simplefilter("ignore", RuntimeWarning)
        return make_trainer("demo", 8, CPU, precision, "off", scans=scans, network_map=SMALL_MAP, **TINY)


def test_bf16_training_step_on_cpu_runs_matmuls_in_bf16_and_statistics_in_fp32():
    """Every GEMM of the network (tokenizer's addmm/bmm, linear layers, projection head; forward and
    backward) runs in bf16, the loss statistics (coding rate ZᵀZ and its Cholesky, cosines) in fp32;
    losses, parameters, gradients and the optimizer state stay fp32; losses are finite and close to
    the fp32 step's on the same batch."""
    tr32, tr16 = _trainer("fp32"), _trainer("bf16")
    assert tr16.precision == "bf16"
    r32 = tr32.step(0)
    with OpDtypes() as ops:
        r16 = tr16.step(0)
    assert ops.dtypes("linalg_cholesky_ex") == {torch.float32}
    x = torch.randn(4, len(SMALL_MAP), 100)
    mask = torch.zeros(4, 4, 5, dtype=torch.bool)
    mask[:, 1] = True
    with OpDtypes() as net_ops:
        with runtime.autocast(CPU, "bf16"):
            out = tr16.student(x, mask, with_tokens=True)
        sum(v.float().sum() for v in out.values()).backward()
    assert net_ops.dtypes("addmm", "mm", "bmm") == {torch.bfloat16}
    for k in ("loss", "cls", "ttr", "tok", "comp", "expa", "std_s", "std_t", "cos_t", "grad_norm"):
        assert r16[k].dtype == torch.float32 and torch.isfinite(r16[k]), k
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32
               for p in tr16.student.parameters() if p.grad is not None)
    assert all(t.dtype == torch.float32 for s in tr16.opt.state.values() for t in s.values() if t.is_floating_point())
    # same init, same batch (one seed): at init the CLS projections nearly coincide, so L_CLS is set by
    # the coding rate of near-equal rows; bf16 rounds activations to 8 bits (0.4%), which moves it by
    # a few 1e-3 here: 0.05 is loose enough for any CPU, and far below what one training step changes
    assert r16["cls"].item() == pytest.approx(r32["cls"].item(), abs=0.05)


def test_step_traced_on_the_meta_device():
    """Student + teacher forward, the losses and the backward of one masked step with every tensor on
    the "meta" device (shapes only, nothing computed). A tensor created without device= (it lands on
    the CPU) or a host sync (.item(), .tolist(), if tensor:) fails here as it would cost a GPU run."""
    cfg = train.resolve_config({"preset": "demo", **TINY})
    student, teacher = build_models(train.encoder_config(cfg), SMALL_MAP, seed=0)
    student.to("meta"), teacher.to("meta")
    x1, x2 = (torch.empty(4, len(SMALL_MAP), 100, device="meta") for _ in range(2))
    mask = torch.zeros(8, 4, 5, dtype=torch.bool, device="meta")
    r = compute_losses(student, teacher, x1, x2, mask, ttr_w=0.3)
    assert {v.device.type for v in r.values()} == {"meta"}
    r["loss"].backward()
    assert all(p.grad is not None and p.grad.device.type == "meta" for p in student.parameters())
    ema_update(list(teacher.parameters()), list(student.parameters()), 0.99)


class HostTraffic(TorchDispatchMode):
    """Records the aten ops that would cost a CUDA run a host round trip: a tensor built from Python
    data on the host (lift_fresh, then copied to the GPU), a device tensor read back as a number
    (_local_scalar_dense: .item(), .tolist(), if tensor:), a data-dependent shape (nonzero) or an
    explicit move between devices (_to_copy with device=)."""

    FLAGGED = ("lift_fresh", "lift_fresh_copy", "_local_scalar_dense", "nonzero")

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name, kwargs = func.overloadpacket.__name__, kwargs or {}
        moves = name == "_to_copy" and "device" in kwargs and kwargs["device"] != args[0].device
        if name in self.FLAGGED or moves:
            self.seen.append(name)
        return func(*args, **kwargs)


def test_a_training_step_and_its_log_window_take_nothing_from_the_host():
    """Trainer.step (batch, mask, forward, backward, AdamW, EMA) plus LogWindow.add, masked and
    unmasked, traced on the CPU: nothing built on the host, nothing read back. On CUDA each of these
    would be a host-device copy or a sync every step (the log step's LogWindow.record is the one sync)."""
    tr = _trainer("fp32")
    window = trainer.LogWindow(tr.device, tr.world, tr.total, "unused")
    kinds = set()
    for i in range(4):
        with HostTraffic() as ops:
            r = tr.step(i)
            window.add(i, r)
        assert ops.seen == [], (i, ops.seen)
        assert r["masked"] is tr.masked_at(i)
        kinds.add(r["masked"])
    assert kinds == {True, False}


def test_log_window_reports_the_first_watched_term_to_go_non_finite():
    """Only the WATCHED terms stop a run; the earliest step wins, a component before the total at a tie."""
    w = trainer.LogWindow(torch.device("cpu"), world=1, total=10, out="runs/x")
    ok = {k: torch.tensor(1.0) for k in trainer.LOGGED}
    w.add(0, {**ok, "cos_t": torch.tensor(float("nan")), "masked": False})   # a monitor: logged, not watched
    w.check_finite()
    w.add(1, {**ok, "loss": torch.tensor(float("inf")), "ttr": torch.tensor(float("nan")), "masked": True})
    w.add(2, {**ok, "cls": torch.tensor(float("nan")), "masked": False})
    with pytest.raises(trainer.NonFiniteLoss, match="non-finite ttr at step 2: stopping. The last good checkpoint "
                                                    "in runs/x is intact"):
        w.check_finite()


def test_an_unmasked_batch_under_ddp_projects_no_token():
    """Under DDP an unmasked step passes an all-False mask with masked=False (training/trainer.py): the mask
    embedding stays in the graph (DDP needs every parameter used), yet no token is projected and the
    losses are exactly those of no mask at all."""
    x1, x2 = (torch.randn(4, len(SMALL_MAP), 100) for _ in range(2))
    enc_cfg, results = train.encoder_config(train.resolve_config({"preset": "demo", **TINY})), []
    for mask, masked in ((None, None), (torch.zeros(8, 4, 5, dtype=torch.bool), False)):
        student, teacher = build_models(enc_cfg, SMALL_MAP, seed=0)
        rows = []
        student.head.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[0]))
        r = compute_losses(student, teacher, x1, x2, mask, ttr_w=0.3, masked=masked)
        r["loss"].backward()
        assert rows == [8 * (1 + 4)]                      # CLS + 4 network summaries of 2B = 8 crops
        results.append((r, student.encoder.mask_token.grad))
    (plain, no_grad), (ddp_like, grad) = results
    assert no_grad is None and grad is not None and not grad.any()
    for k in plain:
        assert torch.equal(plain[k], ddp_like[k]), k


@pytest.mark.skipif(not kernels._HAVE_TRITON or not kernels.interpreter_on(), reason="needs the Triton interpreter")
def test_tokenizer_kernel_runs_in_the_autocast_dtype(monkeypatch):
    """Under bf16 autocast the Triton conv gets bf16 inputs, as torch's own conv would; fp32 data
    alone would have kept it in fp32 on the GPU."""
    from kernels import composed
    seen = []

    def spy(x, w, b, offsets, patch_len):
        seen.append((x.dtype, w.dtype, b.dtype))
        return composed.grouped_conv_gelu_mean_reference(x, w, b, offsets, patch_len)

    monkeypatch.setattr(kernels, "grouped_conv_gelu_mean", spy)
    enc = preset_encoder("demo", "cpu", network_map=SMALL_MAP, **{k: v for k, v in TINY.items() if k != "proj_hidden"})
    x = torch.randn(2, len(SMALL_MAP), 100)
    with kernels.enabled(True):
        enc(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            enc(x)
    assert seen == [(torch.float32,) * 3, (torch.bfloat16,) * 3]


# ---------------------------------------------------------------------------------------------
# what a run prints and stores; bf16 features

def test_run_prints_and_stores_the_resolved_precision(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "scans.npy", rng.standard_normal((12, len(SMALL_MAP), 120)).astype(np.float32))
    np.savetxt(tmp_path / "map.txt", SMALL_MAP, fmt="%d")
    monkeypatch.setattr(runtime, "cpu_bf16_feature", lambda *a: "AVX512_BF16")
    out = tmp_path / "run"
    train.main(["--data", str(tmp_path / "scans.npy"), "--networks", str(tmp_path / "map.txt"), "--preset", "demo",
                *TINY_RUN, "--steps", "1", "--out", str(out)])
    stdout = capsys.readouterr().out
    assert "bf16 autocast (CPU has AVX512_BF16), compile off (auto: off on the CPU)" in stdout
    want = {"device": "cpu", "precision": "bf16", "precision_reason": "CPU has AVX512_BF16",
            "compile": False, "compile_reason": "auto: off on the CPU"}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["runtime"] == want and cfg["train"]["precision"] == "auto"   # the choice, and what it became
    assert torch.load(out / "teacher.pt", weights_only=True)["train_config"]["runtime"] == want
    assert torch.load(out / "state.pt", weights_only=True)["runtime"] == want


def test_bf16_features_on_cpu_are_float32_and_close_to_fp32():
    """bf16 keeps 8 significant bits: each rounding is ≤ 0.4%, and a depth-1 encoder applies a few in
    sequence to LayerNorm'd O(1) features; measured 0.37% relative (Frobenius) here. The bounds (2%, cosine
    ≥ 0.999) allow for other CPUs' GEMM blocking and still catch a wrong cast or a dropped LayerNorm."""
    enc = preset_encoder("demo", "cpu", network_map=SMALL_MAP, **{k: v for k, v in TINY.items() if k != "proj_hidden"})
    scans = random_scans(4, n_rois=len(SMALL_MAP), length=150)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        f32, f16 = (features.encoder_features(enc, scans, n_crops=8, precision=p) for p in ("fp32", "bf16"))
    assert f16.dtype == np.float32 and f16.shape == f32.shape == (4, 8, 64)
    assert np.linalg.norm(f16 - f32) / np.linalg.norm(f32) < 0.02
    cos = (f16 * f32).sum(-1) / (np.linalg.norm(f16, axis=-1) * np.linalg.norm(f32, axis=-1))
    assert cos.min() > 0.999

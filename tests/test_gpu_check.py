"""bench/gpu_check.py: the dry run (same code paths, tiny shapes, CPU) passes and writes every section
of the report, so the command prepared for the first GPU cannot rot; its checks catch what they
should; bad options are clear errors.

    python -m pytest -q tests/test_gpu_check.py
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from bench import gpu_check
from conftest import script_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_dry_run_passes_and_writes_every_section(tmp_path):
    pytest.importorskip("triton")                    # the dry run runs the Triton kernels (interpreter)
    out = tmp_path / "report.md"
    r = subprocess.run([sys.executable, os.path.join(REPO, "bench", "gpu_check.py"), "--dry-run", "--out", str(out)],
                       cwd=tmp_path, env=script_env(threads=1), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = out.read_text()
    assert "DRY RUN" in report
    for _, title in gpu_check.STAGES:
        assert f"### {title}" in report and f"| {title} | pass |" in report, title
    for piece in ("tests/test_kernels.py -k cuda", "| conv fwd+bwd", "| mcr fwd+bwd", "| bf16 |",
                  *(f"| {mode} |" for mode in gpu_check.MODES), "projected 7,600 steps", "| yes |", "crops/s",
                  "SPEC §8 sanity checks", "ok: L_CLS falls"):
        assert piece in report, piece
    assert "DISAGREE" not in report and "FAILED" not in report


@pytest.mark.parametrize("rows, failing", [
    ([(10, [-2.0, -1.4, -0.5, 0.014, 0.95]), (20, [-2.5, -2.0, -0.6, 0.03, 0.8])], []),
    ([(10, [-2.0, -1.4, -0.5, 0.014, 0.95]), (20, [np.nan, -2.0, -0.6, 0.03, 0.8])], ["NaN"]),
    ([(10, [-2.0, -1.4, -0.5, 0.014, 0.95]), (20, [-2.0, -1.42, -0.6, 0.03, 0.8])], ["L_CLS falls"]),
    ([(10, [-2.0, -1.4, -0.5, 0.014, 0.95]), (20, [-2.5, -2.0, -0.6, 0.004, 0.8])], ["std does not shrink"]),
    ([(10, [-2.0, -1.4, -0.5, 0.014, 0.95]), (20, [-2.5, -2.0, -0.6, 0.03, 0.995])], ["not collapsed"]),
    ([(10, [-2.0, -1.4, -0.5, 0.014, 0.95])], ["two log windows"]),
])
def test_sanity_checks_catch_what_they_should(rows, failing):
    bad = [what for what, ok in gpu_check._sanity(rows) if not ok]
    assert len(bad) == len(failing) and all(f in b for f, b in zip(failing, bad)), bad


def test_pytest_summary_parsing():
    assert gpu_check._summary_counts("4 passed, 2 skipped in 3.10s") == ["4 passed", "2 skipped"]
    assert gpu_check._summary_counts("===== 1 failed, 5 passed, 31 deselected in 9.9s =====") == \
        ["1 failed", "5 passed", "31 deselected"]


def test_unknown_stage_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--dry-run", "--stages", "step,bogus"])
    assert e.value.code == 2 and "unknown stage(s) ['bogus']; choose from parity, kernels" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--dry-run", "--stages", ","])
    assert e.value.code == 2 and "--stages names no stage; choose from parity, kernels" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_points_to_the_dry_run(capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.main([])
    assert e.value.code == 2 and "no CUDA GPU here; --dry-run" in capsys.readouterr().err


def test_preset_encoder_same_weights_and_leaves_the_global_rng_alone():
    """The probe stage's encoder is seeded (same weights every call) inside fork_rng: the caller's
    global RNG is not reseeded under its feet."""
    from bench.probe import preset_encoder
    kw = dict(network_map=[0, 1, 1, 0, 2], dim=16, depth=1, heads=2)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    a = preset_encoder("demo", "cpu", **kw)
    assert torch.equal(torch.get_rng_state(), state)
    b = preset_encoder("demo", "cpu", **kw)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))

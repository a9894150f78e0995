"""bench/coupling.py: the decodability measure behind BENCHMARKS.md's "what the teacher encodes"."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.coupling import grouped_r2, network_fc  # noqa: E402
from data.connectivity import fisher_z  # noqa: E402


def test_grouped_r2_finds_a_linear_target_and_nothing_in_noise():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 7))
    groups = np.repeat(np.arange(50), 8)
    Y = np.column_stack([X @ rng.standard_normal(7) + 0.1 * rng.standard_normal(400), rng.standard_normal(400)])
    r2 = grouped_r2(X, Y, groups)
    assert r2[0] > 0.95 and r2[1] < 0.05


def test_grouped_r2_does_not_credit_recognising_a_held_out_subject():
    # Y is a per-subject constant and X only identifies the subject: with folds that split a subject,
    # the ridge would look up the answer (R² near 1); held-out subjects leave nothing to predict.
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(40), 8)
    X = rng.standard_normal((40, 30))[groups] + 0.05 * rng.standard_normal((320, 30))
    Y = rng.standard_normal((40, 1))[groups]
    assert grouped_r2(X, Y, groups)[0] < 0.1


def test_network_fc_is_fisher_z_of_pearson_upper_triangle():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 5, 40)) + rng.standard_normal((3, 1, 40))   # (B, N, t), shared signal
    fc = network_fc(x)                                                    # (B, 10)
    i, j = np.triu_indices(5, 1)
    want = np.stack([fisher_z(np.corrcoef(b)[i, j]) for b in x])
    np.testing.assert_allclose(fc, want, rtol=1e-6, atol=1e-6)


def test_supervised_check_fits_and_reports_held_out_r2(capsys):
    from bench.coupling import supervised_check
    from data.preprocess import probe_crops
    from data.scans import Scans
    from encoder import EncoderConfig
    rng = np.random.default_rng(3)
    net_of = np.repeat(np.arange(3), [5, 7, 4])                           # 16 ROIs, 3 networks
    x = rng.standard_normal((6, 16, 60)).astype(np.float32)
    scans = Scans(data=x, lengths=np.full(6, 60), subjects=[f"s{i}" for i in range(6)])
    cfg = EncoderConfig(dim=16, depth=1, heads=2, crop_len=40, patch_len=10)
    test = probe_crops(scans, np.arange(2), 40, 4).flatten(0, 1)          # (8, C, T')
    supervised_check(cfg, net_of, scans, test, steps=2, batch_scans=2, log_every=1)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| supervised")]
    assert [ln.split("|")[2].strip() for ln in lines] == ["step 1", "step 2"]
    assert all(np.isfinite(float(ln.split("R²")[1].strip(" |"))) for ln in lines)


def _tiny_run(tmp_path):
    """A random 12-ROI, 3-network checkpoint and 12 scans of 60 points it can read."""
    import torch
    from training.checkpoint import save_teacher
    from encoder import Encoder, EncoderConfig
    net_of = np.repeat(np.arange(3), 4)
    torch.manual_seed(0)
    cfg = EncoderConfig(dim=16, depth=1, heads=2, crop_len=40, patch_len=20, proj_hidden=16, proj_dim=8)
    save_teacher(tmp_path / "teacher.pt", Encoder(cfg, net_of), net_of, step=1, train_config={})
    np.save(tmp_path / "scans.npy", np.random.default_rng(4).standard_normal((12, 12, 60)).astype(np.float32))
    return str(tmp_path / "teacher.pt"), str(tmp_path / "scans.npy")


def test_main_prints_every_case_for_teacher_and_random(tmp_path, capsys):
    from bench.coupling import main
    ckpt, scans = _tiny_run(tmp_path)
    main(["--ckpt", ckpt, "--data", scans])
    rows = [ln.split("|") for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ")]
    assert [(r[1].strip(), r[2].strip()) for r in rows] == [
        (enc, case) for enc in ("teacher", "random")
        for case in ("token -> patch mean", "features -> crop FC", "features -> patch FC")]
    assert all(np.isfinite(float(r[3].split("R²")[1])) for r in rows)


def test_main_refuses_too_few_scans(tmp_path):
    import pytest
    from bench.coupling import main
    ckpt, scans = _tiny_run(tmp_path)
    with pytest.raises(SystemExit, match="needs at least 10 scans, got 4"):
        main(["--ckpt", ckpt, "--data", scans, "--scans", "4"])


def test_crop_groups_keep_every_scan_of_a_subject_together():
    from bench.coupling import crop_groups
    assert crop_groups(["b", "a", "b"], 2).tolist() == [1, 1, 0, 0, 1, 1]


def test_main_groups_folds_by_subject_not_by_scan(tmp_path):
    import pytest
    from bench.coupling import main
    ckpt, scans = _tiny_run(tmp_path)
    subjects = tmp_path / "subjects.txt"                                   # 12 scans, 2 per subject
    subjects.write_text("\n".join(f"s{i // 2}" for i in range(12)) + "\n")
    with pytest.raises(SystemExit, match="of at least 10 subjects, got 6"):
        main(["--ckpt", ckpt, "--data", scans, "--subjects", str(subjects)])

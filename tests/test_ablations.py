"""The ablation switches of train.py (the paper's ablation table): each changes what it says and only that,
and a checkpoint and --resume keep them. Tiny models (D 32, depth 1), 40 ROIs in 4 networks."""
import json
import math

import numpy as np
import pytest
import torch

import train
from conftest import SMALL_MAP, TINY
from data import networks, synthetic
from encoder import Encoder
from losses import build_models, compute_losses
from masking import make_mask, random_mask, slice_mask
from tokenizer import LinearTokenizer, SemanticTokenizer
from training import checkpoint
from training.schedules import ttr_weight_at
from test_train import run_main, small, small_args  # noqa: F401 -- small: the module-scoped cohort fixture


def _enc_cfg(**over):
    return train.encoder_config(train.resolve_config({"preset": "demo", **TINY, **over}))


def _inputs(b=4, c=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x1, x2 = torch.randn(b, c, 100, generator=g), torch.randn(b, c, 100, generator=g)
    return x1, x2, slice_mask(2 * b, 4, 5, generator=g)


# ---------------------------------------------------------------- --cls-weight

def test_cls_weight_zero_removes_l_cls_and_its_gradient_only():
    x1, x2, mask = _inputs()
    student, teacher = build_models(_enc_cfg(), SMALL_MAP, seed=0)
    r = compute_losses(student, teacher, x1, x2, mask, ttr_w=0.3, cls_w=0.0)
    assert not r["cls"].requires_grad and torch.isfinite(r["cls"])      # still logged
    assert torch.allclose(r["loss"], 0.3 * r["ttr"] + 0.5 * r["tok"])
    r["loss"].backward()
    got = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    student.zero_grad()
    full = compute_losses(student, teacher, x1, x2, mask, ttr_w=0.3)      # cls_w 1: the method
    assert torch.allclose(full["loss"], full["cls"] + 0.3 * full["ttr"] + 0.5 * full["tok"])
    (0.3 * full["ttr"] + 0.5 * full["tok"]).backward()                   # the objective without L_CLS
    for n, p in student.named_parameters():
        if p.grad is not None:
            assert torch.allclose(got[n], p.grad, atol=1e-6), n
    assert full["cls"].requires_grad


def test_cls_weight_zero_on_a_batch_with_no_other_term_still_backpropagates():
    x1, x2, _ = _inputs()
    student, teacher = build_models(_enc_cfg(), SMALL_MAP, seed=0)
    r = compute_losses(student, teacher, x1, x2, None, ttr_w=0.0, cls_w=0.0)
    assert r["loss"].item() == 0 and r["loss"].requires_grad          # every forward gets its backward (DDP)
    r["loss"].backward()
    assert all(p.grad is None or not p.grad.any() for p in student.parameters())


# ---------------------------------------------------------------- --mask-type

def test_random_mask_has_the_ratio_distribution_and_no_row_or_column_structure():
    B, N, P = 20_000, 9, 5
    mask = random_mask(B, N, P, generator=torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and mask.shape == (B, N, P)
    share = mask.float().mean((1, 2))
    assert (share > 0).all() and (share < 1).all()
    assert abs(share.mean() - 0.75) < 0.005                               # E[r], r ~ U(0.65, 0.85)
    assert abs(share.var() - (0.2 ** 2 / 12 + 0.75 * 0.25 / 45)) < 0.001  # var of r + binomial noise
    per_token = mask.float().mean(0)                                      # every token equally likely
    assert (per_token - 0.75).abs().max() < 0.02
    # independence within a sample given r: two tokens of one network co-masked as often as of two networks
    same_net = (mask[:, 0, 0] & mask[:, 0, 1]).float().mean()
    other_net = (mask[:, 0, 0] & mask[:, 1, 1]).float().mean()
    assert abs(same_net - other_net) < 0.02
    whole = lambda m, d: (m.all(d) | ~m.any(d)).all(-1)                   # every row (column) all or nothing
    assert (whole(mask, 2) | whole(mask, 1)).float().mean() < 0.001
    sliced = slice_mask(2000, N, P, generator=torch.Generator().manual_seed(0))
    assert (whole(sliced, 2) | whole(sliced, 1)).all()                    # what slice masking always has


def test_the_trainer_draws_the_mask_type_of_its_config(monkeypatch):
    from training import trainer

    class Views:                                                          # the batch source, minus the data
        def next_batch(self, b):
            return torch.randn(b, 40, 100), torch.randn(b, 40, 100)
    whole = lambda m: ((m.all(2) | ~m.any(2)).all(-1) | (m.all(1) | ~m.any(1)).all(-1))  # rows or columns only
    for kind, structured in (("slice", (1.0, 1.0)), ("random", (0.0, 0.1))):   # random: ~0.6 % of 4 x 5 masks by chance
        cfg = train.resolve_config({"preset": "demo", **TINY, "batch_size": 32, "steps": 4, "mask_prob": 1.0,
                                    "mask_type": kind})
        tr = trainer.Trainer(cfg, train.encoder_config(cfg), SMALL_MAP, Views(), 4, torch.device("cpu"))
        monkeypatch.setattr(tr, "update", lambda x1, x2, mask, **k: {"mask": mask})
        mask = tr.step(0)["mask"]                                         # (2b, N, P)
        assert mask.shape == (64, 4, 5) and structured[0] <= whole(mask).float().mean() <= structured[1]


def test_make_mask_picks_the_type_and_names_the_choices():
    g = lambda: torch.Generator().manual_seed(3)
    assert torch.equal(make_mask("slice", 8, 9, 5, generator=g()), slice_mask(8, 9, 5, generator=g()))
    assert torch.equal(make_mask("random", 8, 9, 5, generator=g()), random_mask(8, 9, 5, generator=g()))
    with pytest.raises(ValueError, match=r"unknown mask type 'block'; choose one of \('slice', 'random'\)"):
        make_mask("block", 8, 9, 5)
    with pytest.raises(ValueError, match="cannot mask a 1 x 1 token grid"):
        random_mask(8, 1, 1)


# ---------------------------------------------------------------- --tokenizer

def test_linear_tokenizer_is_one_linear_per_network_and_patch():
    m = np.array([1, 0, 2, 1, 0, 0, 2, 1])                               # 3 networks, ROIs interleaved
    D, L = 16, 20
    tok = LinearTokenizer(m, dim=D, patch_len=L)
    assert sum(p.numel() for p in tok.parameters()) == m.size * L * D + 3 * D
    x = torch.randn(2, m.size, 3 * L)
    z = tok(x)                                                            # (B, N, P, D)
    assert z.shape == (2, 3, 3, D)
    w = tok.weight.split([int((m == n).sum()) * L for n in range(3)])
    for n in range(3):
        for p in range(3):
            patch = x[:, m == n, p * L:(p + 1) * L].reshape(2, -1)        # (B, R_n·L), ROI-major
            assert torch.allclose(z[:, n, p], patch @ w[n] + tok.bias[n], atol=1e-5)
    with pytest.raises(ValueError, match=r"linear tokenizer input must be \(B, 8, a multiple of 20\)"):
        tok(torch.randn(2, 8, 30))


def test_tokenizer_switch_builds_the_encoder_with_the_same_token_grid():
    sem, lin = Encoder(_enc_cfg(), SMALL_MAP), Encoder(_enc_cfg(tokenizer="linear"), SMALL_MAP)
    assert isinstance(sem.tokenizer, SemanticTokenizer) and isinstance(lin.tokenizer, LinearTokenizer)
    x = torch.randn(2, 40, 100)
    assert sem(x)[1].shape == lin(x)[1].shape == (2, 4 * 5, 32)
    rest = lambda e: {n: p.shape for n, p in e.named_parameters() if not n.startswith("tokenizer.")}
    assert rest(sem) == rest(lin)                                         # only the tokenizer differs
    with pytest.raises(ValueError, match=r"unknown tokenizer 'conv'; choose one of \('semantic', 'linear'\)"):
        Encoder(_enc_cfg(tokenizer="conv"), SMALL_MAP)


# ---------------------------------------------------------------- --networks rois / one

def test_rois_and_one_maps_give_their_token_grids():
    rois, one = networks.load_network_map("rois", n_rois=40), networks.load_network_map("one", n_rois=40)
    assert rois.tolist() == list(range(40)) and one.tolist() == [0] * 40
    x = torch.randn(2, 40, 100)
    assert Encoder(_enc_cfg(), rois)(x)[1].shape == (2, 40 * 5, 32)     # C·P tokens
    assert Encoder(_enc_cfg(), one)(x)[1].shape == (2, 5, 32)           # P tokens
    m = make_mask("slice", 100, 1, 5, generator=torch.Generator().manual_seed(0))
    assert (m.any(2) & ~m.all(2)).all()                                 # one network: time blocks only
    with pytest.raises(ValueError, match=r"--networks rois \(every ROI its own network\) needs the data's ROI count"):
        networks.load_network_map("rois")


# ---------------------------------------------------------------- --ttr-epochs inf

def test_ttr_epochs_inf_keeps_l_ttr_on_for_the_whole_run():
    cfg = train.resolve_config(vars(train.build_parser().parse_args(["--ttr-epochs", "inf"])))
    assert math.isinf(cfg.ttr_epochs)
    assert [ttr_weight_at(s, math.inf, 0.5) for s in (0, 60, 119)] == [0.5, 0.5, 0.5]
    assert ttr_weight_at(60, 6, 0.5) == 0.0                               # the default window is over by then


# ---------------------------------------------------------------- the switches in config, checkpoints, resume

SWITCHES = ["--cls-weight", "0", "--mask-type", "random", "--tokenizer", "linear", "--ttr-epochs", "inf",
            "--mask-prob", "1"]


def test_switches_are_stored_and_resume_keeps_them(small, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_main(small_args(small, out, "--steps", "2", *SWITCHES), capsys)
    assert code == 0, err
    want = dict(cls_weight=0.0, mask_type="random", tokenizer="linear", ttr_epochs=math.inf)
    saved = json.loads((out / "config.json").read_text())
    assert {k: saved["train"][k] for k in want} == want and saved["encoder"]["tokenizer"] == "linear"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["ttr_w"] for r in log] == [0.5, 0.5]                               # L_TTR never switched off
    encoder, meta = checkpoint.load_teacher(out / "teacher.pt")
    assert isinstance(encoder.tokenizer, LinearTokenizer) and meta["encoder_config"]["tokenizer"] == "linear"
    code, _, err = run_main(small_args(small, out, "--resume"), capsys)          # no switch given: the saved ones
    assert code == 0, err
    state = checkpoint.load_state(out / "state.pt")
    assert {k: state["config"][k] for k in want} == want
    code, _, err = run_main(small_args(small, out, "--cls-weight", "1", "--resume"), capsys)
    assert code == 2 and "--cls-weight 1.0 (saved: 0.0)" in err, err


def test_init_from_names_a_tokenizer_mismatch(small, tmp_path, capsys):
    out = tmp_path / "lin"
    assert run_main(small_args(small, out, "--steps", "1", "--tokenizer", "linear"), capsys)[0] == 0
    code, _, err = run_main(small_args(small, tmp_path / "sem", "--steps", "1", "--init-from", out / "teacher.pt"),
                            capsys)
    assert code == 2 and "tokenizer linear in the checkpoint, semantic in this run" in err, err


def test_bad_switch_values_are_clear_errors(capsys):
    code, _, err = run_main(["--cls-weight", "-1"], capsys)
    assert code == 2 and "--cls-weight must be at least 0 (got -1.0)" in err, err
    for flag, value in (("--mask-type", "block"), ("--tokenizer", "conv")):
        with pytest.raises(SystemExit):
            train.build_parser().parse_args([flag, value])
        assert "invalid choice" in capsys.readouterr().err


# ---------------------------------------------------------------- bench/ablations.py end to end

@pytest.mark.slow
def test_bench_ablations_runs_every_row_end_to_end(tmp_path):
    import subprocess
    import sys
    from conftest import script_env
    from test_train import REPO
    d = tmp_path / "cohort"
    synthetic.make_synthetic_cohort(d, n_pretrain_subjects=12, scans_per_subject=2, n_probe=60,
                                    length_range=(100, 140))
    out = tmp_path / "abl"
    # two rows keep it to a minute: every switch's effect is tested above, this is the bench's machinery
    cmd = [sys.executable, "bench/ablations.py", "--steps", "20", "--cohort", str(d), "--repeats", "2",
           "--only", "no_cls,linear", "--out", str(out), "--dim", "32", "--depth", "1", "--heads", "2",
           "--proj-hidden", "64", "--batch-size", "8", "--eval-scans", "0", "--log-every", "10", "--no-kernels",
           "--precision", "fp32"]
    done = subprocess.run(cmd, cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rep = json.loads((out / "ablations.json").read_text())
    assert list(rep["rows"]) == ["no_cls", "linear"]
    for row in rep["rows"].values():
        assert set(row["tasks"]) == set(synthetic.LABELS) and -1 <= row["cos_t"] <= 1 and row["std_t"] > 0
    saved = lambda row: json.loads((out / row / "config.json").read_text())["train"]
    assert saved("no_cls")["cls_weight"] == 0 and saved("linear")["tokenizer"] == "linear"
    assert saved("linear")["cls_weight"] == 1 and saved("no_cls")["steps"] == saved("linear")["steps"] == 20
    table = done.stdout[done.stdout.rindex("Ablations ("):]
    assert "47.32" in table and "partial collapse, cos 0.95" in table and "age (R²)" in table


def test_bench_ablations_bad_rows_and_cohort_are_clear_errors(tmp_path, capsys):
    from bench import ablations
    with pytest.raises(SystemExit):
        ablations.parse_args(["--only", "full,no_tok"])
    assert "--only: unknown row(s) no_tok; choose from full, no_ttr" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ablations.parse_args(["--cohort", str(tmp_path)])
    assert f"--cohort {tmp_path}: no pretrain.npy there" in capsys.readouterr().err
    args, rows, extra = ablations.parse_args(["--steps", "5", "--dim", "32"])
    assert rows == ablations.DEFAULT_ROWS and "rois" not in rows and extra == ["--dim", "32"]

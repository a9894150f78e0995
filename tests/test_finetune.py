"""Fine-tuning (finetune.py, evaluation/finetune.py): end to end beside the linear probe on the same
splits, weights reset per repeat, the layer-wise lr decay, the epoch chosen on val, test scored once,
and every bad input's message. A tiny encoder (D 32, one block) on 12 ROIs: seconds on a CPU."""
import json

import numpy as np
import pytest
import torch

import finetune
from data.labels import make_task, split_subjects
from data.scans import Scans
from encoder import Encoder, EncoderConfig
from evaluation import finetune as ft
from training.checkpoint import save_teacher

NET_MAP = np.repeat(np.arange(3), 4)          # 12 ROIs in 3 networks
CFG = EncoderConfig(dim=32, depth=2, heads=2, crop_len=40, patch_len=20, proj_hidden=32, proj_dim=16)
FAST = ["--precision", "fp32", "--epochs", "2", "--batch-size", "4", "--split", "2:1:1", "--no-cache",
        "--max-iter", "100"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("run") / "teacher.pt"
    save_teacher(path, Encoder(CFG, NET_MAP), NET_MAP, step=7, train_config={})
    return path


def _cohort(folder, n_subj=24, seed=0):
    """Scans whose network-0 ROIs share a signal whose strength depends on a 2-class label."""
    rng = np.random.default_rng(seed)
    y = np.arange(n_subj) % 2
    age = 20 + 60 * rng.random(n_subj)
    x = rng.normal(size=(n_subj, 12, 70)).astype(np.float32)             # (S, C, T)
    x[:, :4] += (1.0 * y)[:, None, None] * rng.normal(size=(n_subj, 1, 70))
    np.save(folder / "scans.npy", x)
    (folder / "scans_subjects.txt").write_text("".join(f"sub-{i:03d}\n" for i in range(n_subj)))
    rows = [f"sub-{i:03d},{'ab'[c]},{a:.1f}" for i, (c, a) in enumerate(zip(y, age))]
    (folder / "labels.csv").write_text("subject,dx,age\n" + "\n".join(rows) + "\n")
    return ["--data", str(folder / "scans.npy"), "--labels", str(folder / "labels.csv")]


def _task_and_scans(n_subj=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_subj, 12, 60)).astype(np.float32)
    y = np.arange(n_subj) % 2
    scans = Scans(x, np.full(n_subj, 60), [f"s{i}" for i in range(n_subj)])
    return make_task("dx", [str(v) for v in y], [f"s{i}" for i in range(n_subj)]), scans


def test_end_to_end_classification_and_regression_pair_with_the_linear_probe(ckpt, tmp_path, capsys):
    data = _cohort(tmp_path)
    out = tmp_path / "dx.json"
    rep = finetune.main(["--ckpt", str(ckpt), "--task", "dx", "--repeats", "2", "--out", str(out)] + data + FAST)
    saved = json.loads(out.read_text())
    assert saved["methods"].keys() == {"finetuned", "probe", "random_finetuned"} == rep["methods"].keys()
    for m in saved["methods"].values():
        assert [r["seed"] for r in m["repeats"]] == [0, 1]
        assert 0 <= m["summary"]["balanced_accuracy"]["mean"] <= 1
    task = make_task("dx", ["ab"[i % 2] for i in range(24)], [f"sub-{i:03d}" for i in range(24)])
    for r, seed in zip(saved["methods"]["finetuned"]["repeats"], (0, 1)):     # the probe's splits, same sizes
        sizes = [len(p) for p in split_subjects(task, (2, 1, 1), seed)]
        assert [r["n_train"], r["n_val"], r["n_test"]] == sizes
        assert [saved["methods"]["probe"]["repeats"][seed][k] for k in ("n_train", "n_val", "n_test")] == sizes
        assert len(r["curves"]["train_loss"]) == len(r["curves"]["val"]) == r["epochs_run"] == 2
    d = saved["finetuned_minus_baseline"]["probe"]["balanced_accuracy"]
    diffs = [a["test"]["balanced_accuracy"] - b["test"]["balanced_accuracy"]
             for a, b in zip(saved["methods"]["finetuned"]["repeats"], saved["methods"]["probe"]["repeats"])]
    assert d["mean"] == pytest.approx(np.mean(diffs)) and d["repeats"] == 2
    assert saved["config"]["finetune"]["epochs"] == 2 and saved["config"]["preset"] == "paper"
    assert out.with_suffix(".png").stat().st_size > 0 and (tmp_path / "dx_curves.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "teacher, fine-tuned" in printed and "split 2/2" in printed and "ETA" in printed

    rep = finetune.main(["--ckpt", str(ckpt), "--task", "age", "--seeds", "3", "--baselines", "none",
                         "--regression-loss", "mse", "--head", "mlp", "--hidden-dims", "16",
                         "--out", str(tmp_path / "age.json")] + data + FAST)
    assert rep["kind"] == "regression" and rep["methods"].keys() == {"finetuned", "probe"}
    assert set(rep["methods"]["finetuned"]["summary"]) == {"mae", "r2", "pearson_r"}
    # standardised targets, turned back: an untrained head predicts about the train mean, MAE in years
    assert 5 < rep["methods"]["finetuned"]["repeats"][0]["test"]["mae"] < 40


def test_weights_reset_from_the_checkpoint_every_repeat():
    """The same seed twice gives the same numbers only if the second repeat starts from the
    checkpoint again, not from the first repeat's fine-tuned weights."""
    task, scans = _task_and_scans()
    torch.manual_seed(0)
    enc = Encoder(CFG, NET_MAP)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    cfg = ft.FinetuneConfig(epochs=2, batch_size=4, lr=1e-2, lr_scale="none")
    res = ft.run_finetune(enc, task, scans, [5, 5], (2, 1, 1), cfg)
    a, b = res["repeats"]
    assert a["curves"] == b["curves"] and a["test"] == b["test"]
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())   # the checkpoint copy is untouched


def test_layer_wise_lr_decay_gives_each_group_its_rate():
    enc = Encoder(CFG, NET_MAP)
    model = ft.FineTuned(enc, ft.make_head(64, 2))
    L, lr, d = CFG.depth, 1e-3, 0.9
    for tokenizer_lr, tok_layer in (("full", L + 1), ("decayed", 1)):
        cfg = ft.FinetuneConfig(layer_decay=d, tokenizer_lr=tokenizer_lr)
        rate = {id(p): (g["lr"], g["weight_decay"]) for g in ft.param_groups(model, cfg, lr) for p in g["params"]}
        params = dict(enc.named_parameters())
        expect = {"cls_token": d ** (L + 1), "network_embed": d ** (L + 1),
                  "tokenizer.dense_weight": d ** (L + 1 - tok_layer),
                  "blocks.0.attn.qkv.weight": d ** (L - 1), "blocks.1.mlp.0.weight": 1.0, "norm.weight": 1.0}
        for name, mult in expect.items():
            assert rate[id(params[name])][0] == pytest.approx(lr * mult), name
        assert rate[id(params["blocks.0.norm1.weight"])][1] == 0 and rate[id(params["blocks.1.ls1"])][1] == 0
        assert rate[id(params["blocks.0.mlp.0.weight"])][1] == cfg.weight_decay
        assert all(rate[id(p)] == (lr, cfg.weight_decay) for p in model.head.parameters())
        assert len(rate) == sum(1 for _ in model.parameters())                    # every parameter, once


def _scripted(monkeypatch, val_scores):
    """predict() returns outputs whose val balanced accuracy follows `val_scores`, epoch by epoch;
    records every call's subject count (val or test)."""
    calls = []

    def fake_predict(model, scans, plan, n, *a):
        calls.append(n)
        return np.zeros((n, 2))
    def fake_score(out, y, task, target):
        i = min(len(calls) - 1, len(val_scores) - 1)
        return {"balanced_accuracy": val_scores[i] if len(calls) <= len(val_scores) else -1.0, "auroc": 0.5}
    monkeypatch.setattr(ft, "predict", fake_predict)
    monkeypatch.setattr(ft, "score", fake_score)
    return calls


def test_early_stopping_tests_the_best_val_epoch_once(monkeypatch):
    task, scans = _task_and_scans()
    split = split_subjects(task, (2, 1, 1), 0)
    calls = _scripted(monkeypatch, [0.5, 0.8, 0.6, 0.7, 0.9])
    cfg = ft.FinetuneConfig(epochs=5, patience=2, batch_size=4)
    states = []
    real = torch.nn.Module.load_state_dict
    monkeypatch.setattr(torch.nn.Module, "load_state_dict", lambda self, sd, **k: states.append(sd) or real(self, sd))
    res = ft.fit_split(Encoder(CFG, NET_MAP), task, split, scans, cfg, seed=0)
    assert res["epochs_run"] == 4 and res["epoch"] == 1 and res["val"]["balanced_accuracy"] == 0.8
    assert calls == [len(split[1])] * 4 + [len(split[2])]                # 4 val passes, then test once
    assert len(states) == 1                                              # the best epoch's saved copy


def test_keep_last_tests_the_final_epoch(monkeypatch):
    task, scans = _task_and_scans()
    _scripted(monkeypatch, [0.9, 0.5, 0.6])
    cfg = ft.FinetuneConfig(epochs=3, batch_size=4, keep="last")
    res = ft.fit_split(Encoder(CFG, NET_MAP), task, split_subjects(task, (2, 1, 1), 0), scans, cfg, seed=0)
    assert res["epoch"] == 2 and res["val"]["balanced_accuracy"] == 0.6


def test_freeze_epochs_train_the_head_only():
    task, scans = _task_and_scans()
    enc = Encoder(CFG, NET_MAP)
    seen = []
    orig = ft.FineTuned.forward
    ft.FineTuned.forward = lambda self, x: (torch.is_grad_enabled() and seen.append(
        self.encoder.blocks[0].ls1.requires_grad)) or orig(self, x)                  # training steps only
    try:
        ft.fit_split(enc, task, split_subjects(task, (2, 1, 1), 0), scans,
                     ft.FinetuneConfig(epochs=2, freeze_epochs=1, batch_size=6), seed=0)
    finally:
        ft.FineTuned.forward = orig
    assert seen == [False, False, True, True]                            # 12 train subjects, batches of 6


def _error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        finetune.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_bad_inputs(ckpt, tmp_path, capsys):
    data = _cohort(tmp_path)
    ok = ["--ckpt", str(ckpt), "--task", "dx", "--split", "2:1:1"] + data + ["--no-cache"]
    assert "--epochs must be at least 1 (got 0)" in _error(ok + ["--epochs", "0"], capsys)
    err = _error(ok + ["--batch-size", "64"], capsys)
    task = make_task("dx", ["ab"[i % 2] for i in range(24)], [f"sub-{i:03d}" for i in range(24)])
    n_train = len(split_subjects(task, (2, 1, 1), 0)[0])
    assert f"--batch-size 64 is larger than the train split of task 'dx' ({n_train} subjects for seed 0)" in err
    assert "--batch-size must be at least 2" in _error(ok + ["--batch-size", "1"], capsys)
    # 24 subjects 4:1:8: the val split holds 1 subject of a class
    err = _error(["--ckpt", str(ckpt), "--task", "dx"] + data, capsys)
    assert "has 1 subject(s) in the val split of seed 0; fine-tuning needs at least 2 of each class" in err
    torch.save({"step": 3, "optimizer": {}}, tmp_path / "no_encoder.pt")
    err = _error(["--ckpt", str(tmp_path / "no_encoder.pt"), "--task", "dx"] + data, capsys)
    assert "not a Brain-Semantoks" in err
    assert "--freeze-epochs 3 leaves no epoch" in _error(ok + ["--epochs", "3", "--freeze-epochs", "3"], capsys)
    assert "--hidden-dims must be comma-separated" in _error(ok + ["--hidden-dims", "a,b"], capsys)


def test_finetuning_augmentation_keeps_every_roi():
    """The authors' fine-tuning augments as pretraining does, less the ROI drop."""
    from data.preprocess import augment
    x = torch.ones(16, 40, 100)
    kept = augment(x.clone(), torch.Generator().manual_seed(0), drop_rois=False).mean(-1)   # (B, C)
    dropped = augment(x.clone(), torch.Generator().manual_seed(0)).mean(-1)
    assert kept.min() > 0.4                               # at most 30 % of time zeroed, scale >= 0.8
    assert (dropped.abs() < 0.1).sum(1).min() >= 1        # pretraining zeroes at least one ROI per crop


def test_task_all_one_table_with_every_label(ckpt, tmp_path, capsys):
    data = _cohort(tmp_path)
    argv = ["--ckpt", str(ckpt), "--task", "all", "--seeds", "0", "--baselines", "none",
            "--out", str(tmp_path / "all.json")] + data + FAST
    rep = finetune.main(argv + ["--epochs", "1"])
    assert set(rep["tasks"]) == {"dx", "age"} and rep["skipped"] == {}
    for t in rep["tasks"].values():
        assert set(t["methods"]) == {"finetuned", "probe"} and "probe" in t["finetuned_minus_baseline"]
    assert "fine-tuned − linear probe" in capsys.readouterr().out
    assert (tmp_path / "all.png").stat().st_size > 0


def test_absent_atlases_networks_are_masked_in_training_and_evaluation():
    """An atlas the data lack (issue 20): its networks take the mask embedding in every crop, so the
    fine-tuned model's output and gradients cannot depend on the values in its ROIs."""
    torch.manual_seed(0)
    model = ft.FineTuned(Encoder(CFG, NET_MAP), ft.make_head(2 * CFG.dim, 2), masked_networks=[2]).train()
    x = torch.randn(4, len(NET_MAP), CFG.crop_len)
    y = x.clone()
    y[:, NET_MAP == 2] = torch.randn(4, int((NET_MAP == 2).sum()), CFG.crop_len) * 100   # network 2's ROIs
    outs = []
    for inp in (x, y):
        model.zero_grad()
        out = model(inp)
        out.sum().backward()
        outs.append((out.detach(), [p.grad.clone() for p in model.encoder.blocks.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b)
    unmasked = ft.FineTuned(model.encoder, model.head)
    assert not torch.allclose(unmasked(x), unmasked(y))             # without the mask, those ROIs do matter

"""Linear probing (SPEC §9): per-subject crop averaging, no subject leaking across splits, the
baselines, the CLI end to end on a tiny encoder, and every user error's message. Labels, tasks and
splits: test_labels.py."""
import json
import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
import torch

from data.scans import Scans
from evaluation import features
from evaluation import linear_probe
import probe
from data import synthetic
from training.checkpoint import save_teacher
from encoder import Encoder, EncoderConfig
from data.labels import make_task, split_subjects
from data.connectivity import fisher_z

NET_MAP = np.repeat(np.arange(3), 4)          # 12 ROIs in 3 networks


# ---------------------------------------------------------------- the probe

def _subject_feats(n_subj, scans_per_subj, crops, dim, seed=0):
    """Features that identify a subject and nothing else (labels are coin flips)."""
    rng = np.random.default_rng(seed)
    finger = rng.normal(size=(n_subj, dim))
    subj = np.repeat(np.arange(n_subj), scans_per_subj)
    feats = finger[subj][:, None, :] + 0.1 * rng.normal(size=(len(subj), crops, dim))   # (S, K, F)
    y = rng.integers(0, 2, n_subj)
    return feats.astype(np.float32), [f"s{i}" for i in subj], [str(v) for v in y[subj]]


def test_no_subject_leaks_across_splits():
    feats, subjects, values = _subject_feats(60, 3, 4, 40)
    t = make_task("t", values, subjects)
    train, val, test = split_subjects(t, seed=0)
    _, u_tr = linear_probe._rows(feats, t, train)
    assert set(train[u_tr]).isdisjoint(test) and set(train[u_tr]).isdisjoint(val)
    # if scans (or crops) of a test subject reached training, memorising the subject's fingerprint
    # would score ~100% on random labels; split by subject it stays near chance
    res = linear_probe.run_probe(feats, t, seeds=range(3))
    assert res["summary"]["balanced_accuracy"]["mean"] < 0.75
    for r in res["repeats"]:                                               # one score per test subject
        assert np.sum(r["confusion"]) == r["n_test"] == len(split_subjects(t, seed=r["seed"])[2])


def test_crop_scores_are_averaged_per_subject():
    # each crop points the right way 75% of the time; the mean over a subject's 8 crops ~93%
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    crop_sign = np.where(rng.random((200, 8)) < 0.75, 1, -1) * np.where(y, 1, -1)[:, None]   # (S, K)
    feats = (crop_sign[..., None] + 0.3 * rng.normal(size=(200, 8, 3))).astype(np.float32)
    t = make_task("t", [str(v) for v in y], [f"s{i}" for i in range(200)])
    res = linear_probe.run_probe(feats, t, seeds=[0, 1])
    assert res["summary"]["balanced_accuracy"]["mean"] > 0.86


def test_regression_metrics_and_wide_features():
    rng = np.random.default_rng(2)
    target = rng.normal(size=100)
    feats = rng.normal(size=(100, 1, 500)).astype(np.float32)              # more features than samples
    feats[:, 0, :50] += target[:, None]
    t = make_task("age", [str(v) for v in target], [f"s{i}" for i in range(100)])
    res = linear_probe.run_probe(feats, t, seeds=[0, 1])
    assert set(res["summary"]) == {"mae", "r2", "pearson_r"}
    assert res["summary"]["pearson_r"]["mean"] > 0.5 and len(res["repeats"]) == 2


def test_paired_differences_of_a_metric_missing_on_every_split_are_nan_without_a_warning():
    """AUROC is NaN on a split whose test subjects lack a class: summary and paired difference alike
    are NaN then, quietly (numpy's nanmean would warn 'Mean of empty slice')."""
    rep = [{"test": {"balanced_accuracy": 0.6, "auroc": float("nan")}}] * 2
    results = {"teacher": {"repeats": rep}, "fc": {"repeats": rep}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = linear_probe.paired_differences(results, "classification")["fc"]
    assert np.isnan(d["auroc"]["mean"]) and np.isnan(d["auroc"]["std"]) and d["auroc"]["repeats"] == 0
    assert d["balanced_accuracy"]["mean"] == 0.0 and d["balanced_accuracy"]["repeats"] == 2


def test_fc_features_fisher_z():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 50))
    x[1, :, 30:] = np.nan                                                  # shorter scan, NaN-padded
    scans = Scans(data=x.astype(np.float32), lengths=np.array([50, 30]), subjects=["a", "b"])
    f = features.fc_features(scans)
    assert f.shape == (2, 1, 6)
    np.testing.assert_allclose(f[1, 0, 0], fisher_z(np.corrcoef(x[1, :, :30])[0, 1]), rtol=1e-5)


# ---------------------------------------------------------------- CLI end to end (tiny encoder)

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(1)                                                   # the random baseline uses seed 0
    cfg = EncoderConfig(dim=32, depth=1, heads=2, crop_len=40, patch_len=20, proj_hidden=32, proj_dim=16)
    path = tmp_path_factory.mktemp("run") / "teacher.pt"
    save_teacher(path, Encoder(cfg, NET_MAP), NET_MAP, step=7, train_config={})
    return path


def _cohort(folder, n_subj=36, seed=0, n_rois=12):
    """Scans whose network-0 ROIs share a signal whose strength depends on a 3-class label."""
    rng = np.random.default_rng(seed)
    y = np.arange(n_subj) % 3
    age = 20 + 60 * rng.random(n_subj)
    lengths = rng.integers(50, 90, n_subj)
    x = rng.normal(size=(n_subj, n_rois, 90)).astype(np.float32)          # (S, C, T)
    x[:, :4] += (0.5 * y)[:, None, None] * rng.normal(size=(n_subj, 1, 90))
    x = np.where(np.arange(90) < lengths[:, None, None], x, np.nan).astype(np.float32)
    np.save(folder / "scans.npy", x)
    (folder / "scans_subjects.txt").write_text("".join(f"sub-{i:03d}\n" for i in range(n_subj)))
    rows = [f"sub-{i:03d},{'abc'[c]},{a:.1f}" for i, (c, a) in enumerate(zip(y, age))]
    (folder / "labels.csv").write_text("subject,dx,age\n" + "\n".join(rows[::-1]) + "\n")  # order differs
    return folder / "scans.npy", folder / "labels.csv"


def test_cli_three_classes_then_regression_reuses_cache(ckpt, tmp_path, monkeypatch, capsys):
    scans, labels = _cohort(tmp_path)
    out = tmp_path / "dx.json"
    base = ["--ckpt", str(ckpt), "--data", str(scans), "--labels", str(labels), "--cache-dir", str(tmp_path / "c"),
            "--max-iter", "100"]
    probe.main(base + ["--task", "dx", "--repeats", "2", "--out", str(out)])
    rep = json.loads(out.read_text())
    assert rep["kind"] == "classification" and rep["classes"] == ["a", "b", "c"]
    assert set(rep["methods"]) == {"teacher", "random", "fc"}
    for m in rep["methods"].values():
        assert [r["seed"] for r in m["repeats"]] == [0, 1]
        assert np.sum(m["confusion"]) == sum(r["n_test"] for r in m["repeats"])
    assert out.with_suffix(".png").stat().st_size > 0
    assert len(list((tmp_path / "c").glob("*.npy"))) == 2                 # teacher + random encoder
    printed = capsys.readouterr().out
    assert "balanced acc" in printed
    wins = rep["teacher_minus_baseline"]["fc"]["balanced_accuracy"]["teacher_better"]
    fc_line = next(line for line in printed.splitlines() if line.startswith("teacher − FC (Fisher-z)"))
    assert fc_line.endswith(f"(teacher better in {wins}/2)")
    paired = rep["teacher_minus_baseline"]["fc"]["balanced_accuracy"]
    diffs = [a["test"]["balanced_accuracy"] - b["test"]["balanced_accuracy"]
             for a, b in zip(rep["methods"]["teacher"]["repeats"], rep["methods"]["fc"]["repeats"])]
    assert paired["mean"] == pytest.approx(np.mean(diffs)) and paired["repeats"] == 2

    def no_extraction(*a, **k):
        raise AssertionError("features should come from the cache")
    monkeypatch.setattr(features, "encoder_features", no_extraction)
    rep = probe.main(base + ["--task", "age", "--seeds", "3,4", "--baselines", "random"])
    assert rep["kind"] == "regression" and set(rep["methods"]) == {"teacher", "random"}
    assert set(rep["methods"]["teacher"]["summary"]) == {"mae", "r2", "pearson_r"}
    assert (ckpt.parent / "probe_age.json").exists()
    binned = probe.main(base + ["--task", "age", "--bins", "3", "--repeats", "1", "--baselines", "none"])
    assert binned["kind"] == "classification" and len(binned["classes"]) == 3


def test_cli_folder_of_tsv_files_several_scans_per_subject(ckpt, tmp_path, capsys):
    rng = np.random.default_rng(0)
    folder = tmp_path / "xcpd"
    folder.mkdir()
    for s in range(12):
        for ses in range(2 if s % 2 else 1):                              # 18 scans, 12 subjects
            x = rng.normal(size=(int(rng.integers(45, 70)), 12))          # (T, C) as XCP-D writes
            np.savetxt(folder / f"sub-{s:02d}_ses-{ses}_timeseries.tsv", x, delimiter="\t",
                       header="\t".join(f"roi{c}" for c in range(12)), comments="")
    labels = tmp_path / "participants.tsv"
    labels.write_text("participant_id\tsex\n" + "".join(f"sub-{s:02d}\t{'MF'[s % 2] if s != 5 else 'n/a'}\n"
                                                         for s in range(12)))
    rep = probe.main(["--ckpt", str(ckpt), "--data", str(folder), "--labels", str(labels), "--task", "sex",
                      "--repeats", "2", "--no-cache", "--max-iter", "100", "--out", str(tmp_path / "sex.json")])
    assert rep["config"]["n_subjects"] == 11 and rep["config"]["n_scans"] == 16 and rep["config"]["n_missing"] == 2
    assert "2 scan(s) dropped for a missing label" in capsys.readouterr().out


def _error(argv, capsys, main=None):
    """Run a script's main (probe.py's by default) on bad input: exit code 2, no traceback -> stderr."""
    with pytest.raises(SystemExit) as e:
        (main or probe.main)(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_cli_user_errors(ckpt, tmp_path, capsys):
    scans, labels = _cohort(tmp_path)
    args = ["--data", str(scans), "--labels", str(labels), "--no-cache"]
    ok = ["--ckpt", str(ckpt)] + args
    assert "checkpoint not found" in _error(["--ckpt", str(tmp_path / "no.pt"), "--task", "dx"] + args, capsys)
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage" * 100)
    assert "corrupt" in _error(["--ckpt", str(tmp_path / "corrupt.pt"), "--task", "dx"] + args, capsys)
    torch.save({"model": torch.zeros(3)}, tmp_path / "other.pt")
    assert "not a Brain-Semantoks" in _error(["--ckpt", str(tmp_path / "other.pt"), "--task", "dx"] + args, capsys)
    assert "unknown task 'sz'" in _error(ok + ["--task", "sz"], capsys)
    assert "available: dx, age" in _error(ok + ["--task", "sz"], capsys)

    (tmp_path / "rows.csv").write_text("dx\n" + "a\nb\nc\n" * 5)
    err = _error(["--ckpt", str(ckpt), "--data", str(scans), "--labels", str(tmp_path / "rows.csv"),
                  "--task", "dx"], capsys)
    assert "15 rows but there are 36 scans" in err

    (tmp_path / "rare.csv").write_text("subject,dx\n" + "".join(f"sub-{i:03d},{'x' if i < 2 else 'y'}\n"
                                                               for i in range(36)))
    err = _error(["--ckpt", str(ckpt), "--data", str(scans), "--labels", str(tmp_path / "rare.csv"),
                  "--task", "dx"], capsys)
    assert "class 'x' of task 'dx' has 2 subject(s)" in err

    wrong = tmp_path / "wrong"
    wrong.mkdir()
    w_scans, w_labels = _cohort(wrong, n_rois=10)
    err = _error(["--ckpt", str(ckpt), "--data", str(w_scans), "--labels", str(w_labels), "--task", "dx"], capsys)
    assert "the data have 10 ROIs but the network map has 12" in err
    assert "--data and --labels go together" in _error(["--ckpt", str(ckpt), "--data", str(scans), "--task", "dx"],
                                                       capsys)
    assert "--split must be" in _error(ok + ["--task", "dx", "--split", "4:1"], capsys)
    assert "unknown baseline" in _error(ok + ["--task", "dx", "--baselines", "pca"], capsys)
    if not torch.cuda.is_available():
        assert "no CUDA device" in _error(ok + ["--task", "dx", "--device", "cuda"], capsys)


def test_row_space_fit_is_exact():
    rng = np.random.default_rng(3)
    x_tr, x_te = rng.normal(size=(20, 200)), rng.normal(size=(7, 200))
    y = rng.integers(0, 2, 20)
    z_tr, [(z_te, _)] = linear_probe.row_space(x_tr.astype(np.float32), [(x_te.astype(np.float32), None)])
    assert z_tr.shape == (20, 20)
    full = LogisticRegression(C=0.1, tol=1e-10, max_iter=5000).fit(x_tr, y).decision_function(x_te)
    small = LogisticRegression(C=0.1, tol=1e-10, max_iter=5000).fit(z_tr, y).decision_function(z_te)
    np.testing.assert_allclose(small, full, rtol=1e-3, atol=1e-4)


def test_cli_synthetic_cohort_by_default(ckpt, tmp_path, monkeypatch, capsys):
    folder = synthetic.make_synthetic_cohort(tmp_path / "syn", n_pretrain_subjects=2, scans_per_subject=1, n_probe=40,
                                        length_range=(100, 120), network_map=NET_MAP)
    monkeypatch.setattr(synthetic, "ensure_synthetic_cohort", lambda: folder)
    rep = probe.main(["--ckpt", str(ckpt), "--task", "sz", "--repeats", "1", "--baselines", "none", "--no-cache",
                      "--out", str(tmp_path / "sz.json")])
    assert rep["synthetic"] and rep["config"]["n_subjects"] == 40            # ids matched via probe_subjects.txt
    assert "SYNTHETIC" in capsys.readouterr().out


def test_cli_task_all_every_label_in_one_table(ckpt, tmp_path, monkeypatch, capsys):
    folder = synthetic.make_synthetic_cohort(tmp_path / "syn", n_pretrain_subjects=2, scans_per_subject=1, n_probe=40,
                                             length_range=(100, 120), network_map=NET_MAP)
    monkeypatch.setattr(synthetic, "ensure_synthetic_cohort", lambda: folder)
    extracted, real = [], features.encoder_features
    monkeypatch.setattr(features, "encoder_features", lambda *a, **k: extracted.append(a[-1]) or real(*a, **k))
    out = tmp_path / "all.json"
    rep = probe.main(["--ckpt", str(ckpt), "--task", "all", "--repeats", "2", "--no-cache", "--max-iter", "100",
                      "--out", str(out)])
    printed = capsys.readouterr().out.splitlines()
    assert json.loads(out.read_text())["tasks"].keys() == rep["tasks"].keys()
    assert list(rep["tasks"]) == list(synthetic.LABELS) and not rep["skipped"]
    assert len(extracted) == 2                                # teacher + random encoder, once for every task
    header = next(line for line in printed if line.startswith("task "))
    assert "teacher − random enc." in header and "teacher − FC" in header
    for name, t in rep["tasks"].items():
        assert set(t["methods"]) == {"teacher", "random", "fc"}
        assert t["metric"] == ("r2" if name == "age" else "balanced_accuracy")
        assert [r["seed"] for r in t["methods"]["fc"]["repeats"]] == [0, 1]
        assert t["teacher_minus_baseline"]["fc"][t["metric"]]["repeats"] == 2
        assert sum(line.split()[:1] == [name] for line in printed) == 1             # one table row per task
    assert out.with_suffix(".png").stat().st_size > 0


def test_cli_task_all_bins_skips_and_errors(ckpt, tmp_path, capsys):
    scans, labels = _cohort(tmp_path)
    rows = labels.read_text().splitlines()
    labels.write_text("\n".join([rows[0] + ",site"] + [r + ",A" for r in rows[1:]]) + "\n")   # one class only
    rep = probe.main(["--ckpt", str(ckpt), "--data", str(scans), "--labels", str(labels), "--task", "all",
                      "--bins", "3", "--repeats", "1", "--baselines", "none", "--no-cache", "--max-iter", "100",
                      "--out", str(tmp_path / "all.json")])
    assert list(rep["tasks"]) == ["dx", "age"] and rep["tasks"]["dx"]["classes"] == ["a", "b", "c"]
    assert rep["tasks"]["age"]["kind"] == "classification" and len(rep["tasks"]["age"]["classes"]) == 3
    assert "single class" in rep["skipped"]["site"] and "skipped 'site'" in capsys.readouterr().out
    err = _error(["--ckpt", str(ckpt), "--data", str(scans), "--labels", str(labels), "--task", "all",
                  "--task-type", "regression"], capsys)
    assert "--task-type applies to a single task" in err


@pytest.mark.parametrize("opts, message", [
    (["--seeds", ","], "--seeds must be comma-separated integers"),
    (["--seeds", "1,x"], "--seeds must be comma-separated integers"),
    (["--seeds", "-1"], "--seeds must be non-negative (got -1)"),
    (["--seeds", "1,2,1"], "--seeds lists 1 more than once"),
    (["--repeats", "0"], "--repeats must be at least 1"),
    (["--max-iter", "0"], "--max-iter must be at least 1 (got 0)"),
    (["--bins", "1"], "--bins must be at least 2"),
    (["--out", "results.png"], "--out results.png: expected a name ending in .json"),
])
def test_cli_option_errors_come_before_any_file(opts, message, tmp_path, capsys):
    # the checkpoint does not exist: the option's own message shows it was checked first
    assert message in _error(["--ckpt", str(tmp_path / "no.pt"), "--task", "dx"] + opts, capsys)


def test_cli_task_all_decides_every_task_before_extraction(ckpt, tmp_path, monkeypatch, capsys):
    scans, labels = _cohort(tmp_path, n_subj=13)
    base = ["--ckpt", str(ckpt), "--data", str(scans), "--task", "all", "--no-cache"]
    # 13 subjects: age as a regression would leave 1 val subject (4:1:8), too few for R²; binned in
    # 2 quantile classes of 6 and 7 subjects it splits, so --bins makes it probeable
    rep = probe.main(base + ["--labels", str(labels), "--bins", "2", "--repeats", "1", "--baselines", "none",
                             "--max-iter", "100", "--out", str(tmp_path / "all.json")])
    assert list(rep["tasks"]) == ["dx", "age"] and not rep["skipped"]
    assert rep["tasks"]["age"]["kind"] == "classification" and len(rep["tasks"]["age"]["classes"]) == 2

    def no_extraction(*a, **k):
        raise AssertionError("a task error must show before any feature is extracted")
    monkeypatch.setattr(features, "method_features", no_extraction)
    with pytest.raises(AssertionError, match="before any feature"):       # without --bins age is skipped,
        probe.main(base + ["--labels", str(labels)])                       # and says so before extraction
    assert "skipped 'age': task 'age' has 13 labelled subjects" in capsys.readouterr().out
    subjects_only = tmp_path / "subjects.csv"
    subjects_only.write_text("subject\n" + "".join(f"sub-{i:03d}\n" for i in range(13)))
    assert "has no label columns" in _error(base + ["--labels", str(subjects_only)], capsys)
    one_class = tmp_path / "one_class.csv"
    one_class.write_text("subject,site\n" + "".join(f"sub-{i:03d},A\n" for i in range(13)))
    err = _error(base + ["--labels", str(one_class)], capsys)
    assert "no label column could be probed" in err

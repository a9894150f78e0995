"""The built-in synthetic cohort (data/synthetic.py): files and labels, the subject fingerprint, caching
and version bumps, and each label mechanism, measured with the statistic it changes: present at the
default effect size, absent when that size is 0."""
import csv
import json

import numpy as np
import pytest
import torch

from data.load import load_scans
from data import synthetic
from data.connectivity import fisher_z, scan_fc
from data.preprocess import zscore

NET9 = np.repeat(np.arange(9), 4)       # 36 ROIs in the 9 networks of the default map (fast)


def test_synthetic_cohort_files_labels_and_disjoint_subjects(tmp_path):
    d = synthetic.make_synthetic_cohort(tmp_path, n_pretrain_subjects=6, scans_per_subject=2, n_probe=8,
                                        length_range=(40, 60), seed=1)
    pre, probe = load_scans(d / "pretrain.npy"), load_scans(d / "probe.npy")
    assert pre.data.dtype == np.float16 and pre.data.shape == (12, 457, 60) and probe.data.shape == (8, 457, 60)
    assert pre.lengths.min() >= 40 and pre.lengths.max() <= 60 and np.isnan(pre.data[0, 0, pre.lengths[0]:]).all()
    assert pre.subjects[:4] == ["pre0000", "pre0000", "pre0001", "pre0001"] and pre.n_subjects == 6
    assert not set(pre.subjects) & set(probe.subjects)
    rows = [r.split(",") for r in (d / "probe_labels.csv").read_text().split()]
    assert rows[0] == ["subject", "sz", "mdd", "asd", "sex", "age", "mech_within", "mech_between", "mech_global",
                       "mech_timescale"] == ["subject", *synthetic.LABELS]
    assert [r[0] for r in rows[1:]] == probe.subjects
    age = rows[0].index("age")
    assert all(r[i] in ("0", "1") for r in rows[1:] for i in range(1, len(rows[0])) if i != age)
    assert all(20 <= float(r[age]) <= 80 for r in rows[1:])
    assert len((d / "network_map.txt").read_text().split()) == 457
    assert json.loads((d / "cohort.json").read_text())["version"] == synthetic.SYNTH_VERSION == 3


def test_every_label_is_documented_and_every_mechanism_used():
    for label in synthetic.LABELS:
        assert f"  {label} " in synthetic.__doc__, label
    used = {m for design in synthetic.DESIGN.values() for m in design}
    assert used == set(synthetic.MECHANISMS)
    for m in synthetic.MECHANISMS:                                   # one pure label per mechanism
        assert any(set(design) == {m} for design in synthetic.DESIGN.values()), m


def test_synthetic_subjects_have_a_within_network_fingerprint(tmp_path):
    """Subject-stable topography: two scans of one subject share their within-network FC pattern
    more than scans of different subjects; with topography=0 that fingerprint is gone (without the
    labels' within-network effects, which are subject-stable too)."""
    def gap(topography, **sizes):
        d = synthetic.make_synthetic_cohort(tmp_path / str(topography), n_pretrain_subjects=6, scans_per_subject=2,
                                            n_probe=2, length_range=(300, 300), seed=3, topography=topography,
                                            **sizes)
        fc = scan_fc(load_scans(d / "pretrain.npy"))                  # (12, C, C)
        m = np.loadtxt(d / "network_map.txt", dtype=int)
        i, j = np.triu_indices(len(m), 1)
        w = fc[:, i[m[i] == m[j]], j[m[i] == m[j]]]                              # within-network edges
        r = np.corrcoef(w)                                                      # (12, 12) scan x scan
        same = np.kron(np.eye(6), np.ones((2, 2))).astype(bool) & ~np.eye(12, dtype=bool)
        return r[same].mean() - r[~same & ~np.eye(12, dtype=bool)].mean()
    with_topography, without = gap(0.5), gap(0.0, effect_within=0.0)
    assert with_topography > 0.05 > abs(without), (with_topography, without)


def test_ensure_synthetic_cohort_reuses_and_repairs(tmp_path, capsys):
    kw = dict(n_pretrain_subjects=4, scans_per_subject=2, n_probe=4, length_range=(30, 40))
    d = synthetic.ensure_synthetic_cohort(tmp_path / "syn", **kw)
    assert "generating the SYNTHETIC cohort" in capsys.readouterr().err
    before = (d / "probe.npy").stat().st_mtime_ns
    synthetic.ensure_synthetic_cohort(d, **kw)
    err = capsys.readouterr().err
    assert "generating" not in err and "SYNTHETIC" in err and (d / "probe.npy").stat().st_mtime_ns == before
    (d / "pretrain.npy").write_bytes(b"garbage")
    synthetic.ensure_synthetic_cohort(d, **kw)
    assert "unreadable" in capsys.readouterr().err and load_scans(d / "pretrain.npy").data.shape[0] == 8
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]          # fileio.atomic_write's temporaries


def test_a_v2_cache_and_its_labels_are_regenerated(tmp_path, capsys):
    """A cohort cached by the previous generator (version 2: labels sz..age only) is rebuilt, not read."""
    kw = dict(n_pretrain_subjects=4, scans_per_subject=2, n_probe=6, length_range=(30, 40))
    d = synthetic.ensure_synthetic_cohort(tmp_path / "syn", **kw)
    capsys.readouterr()
    meta = json.loads((d / "cohort.json").read_text())
    v2 = {k: v for k, v in meta.items() if not k.startswith("effect_") and k != "labels"}
    (d / "cohort.json").write_text(json.dumps({**v2, "version": 2, "effect": 0.09}))
    (d / "probe_labels.csv").write_text("subject,sz,mdd,asd,sex,age\n" +
                                        "".join(f"probe{i:04d},1,0,1,0,42.0\n" for i in range(6)))
    synthetic.ensure_synthetic_cohort(d, **kw)
    assert "cohort version 2, this code writes version 3" in capsys.readouterr().err
    assert (d / "probe_labels.csv").read_text().splitlines()[0] == "subject," + ",".join(synthetic.LABELS)
    # version right but an old labels file beside it (copied by hand): rebuilt too
    (d / "probe_labels.csv").write_text("subject,sz,mdd,asd,sex,age\n" +
                                        "".join(f"probe{i:04d},1,0,1,0,42.0\n" for i in range(6)))
    synthetic.ensure_synthetic_cohort(d, **kw)
    assert "probe_labels.csv does not match" in capsys.readouterr().err
    assert (d / "probe_labels.csv").read_text().splitlines()[0] == "subject," + ",".join(synthetic.LABELS)


# ---------------------------------------------------------------- mechanisms

def _cohort(path, **sizes):
    """160 probe subjects x 36 ROIs x 300 points (~1 s) -> scans, {label: values}."""
    d = synthetic.make_synthetic_cohort(path, n_pretrain_subjects=1, scans_per_subject=1, n_probe=160,
                                        length_range=(300, 300), network_map=NET9, seed=1, **sizes)
    rows = list(csv.reader((d / "probe_labels.csv").read_text().splitlines()))
    labels = {h: np.array([float(r[i]) for r in rows[1:]]) for i, h in enumerate(rows[0]) if h != "subject"}
    return load_scans(d / "probe.npy"), labels


def _fc_block(fc, a, b):
    """Mean Fisher-z FC (S,) over the ROI pairs of networks a and b (within a when a == b)."""
    m = fc[:, NET9 == a][:, :, NET9 == b]
    if a == b:
        k = m.shape[1]
        return (m.sum((1, 2)) - np.trace(m, axis1=1, axis2=2)) / (k * k - k)
    return m.mean((1, 2))


def _autocorrelation(scans, nets, lag=1):
    """Lag-`lag` autocorrelation (S,) of the z-scored ROIs of the given networks, averaged over ROIs."""
    z = zscore(torch.from_numpy(scans.read(np.arange(len(scans)))), torch.as_tensor(scans.lengths)).numpy()
    x = z[:, np.isin(NET9, nets)]
    return (x[..., lag:] * x[..., :-lag]).sum(-1).mean(1) / (z.shape[-1] - lag)


def _statistic(mechanism, scans):
    """The statistic each pure label's mechanism changes (synthetic.DESIGN), one value per scan."""
    fc = fisher_z(scan_fc(scans))
    design = synthetic.DESIGN[f"mech_{'global' if mechanism == 'gain' else mechanism}"][mechanism]
    if mechanism == "within":
        return sum(_fc_block(fc, n, n) for n in design)                       # within-network FC
    if mechanism == "between":
        return sum(_fc_block(fc, a, b) for a, b in design)                    # between-network FC
    if mechanism == "gain":
        return _autocorrelation(scans, range(9))                              # AR gain of every ROI
    return _autocorrelation(scans, list(design))                              # timescale: spectrum shape


def _t(stat, y):
    """Welch t of label-1 minus label-0 subjects."""
    a, b = stat[y == 1], stat[y == 0]
    return (a.mean() - b.mean()) / np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))


@pytest.fixture(scope="module")
def default_sizes(tmp_path_factory):
    return _cohort(tmp_path_factory.mktemp("mech") / "default")


@pytest.mark.parametrize("mechanism", synthetic.MECHANISMS)
def test_each_mechanism_is_present_and_absent_at_size_zero(mechanism, default_sizes, tmp_path):
    label = f"mech_{'global' if mechanism == 'gain' else mechanism}"
    scans, labels = default_sizes
    present = _t(_statistic(mechanism, scans), labels[label])
    scans0, labels0 = _cohort(tmp_path, **{f"effect_{mechanism}": 0.0})
    absent = _t(_statistic(mechanism, scans0), labels0[label])
    assert present > 4 and abs(absent) < 2.5, (present, absent)


def test_timescale_leaves_fc_alone_and_within_leaves_spectra_alone(default_sizes):
    """The two mechanisms built to be pure: the timescale label changes no zero-lag correlation (FC
    cannot see it), the within label no ROI's spectrum."""
    scans, labels = default_sizes
    fc = fisher_z(scan_fc(scans))
    nets = list(synthetic.DESIGN["mech_timescale"]["timescale"])
    assert abs(_t(sum(_fc_block(fc, n, n) for n in nets), labels["mech_timescale"])) < 3
    assert abs(_t(_autocorrelation(scans, list(synthetic.DESIGN["mech_within"]["within"])),
                  labels["mech_within"])) < 3

"""embed.py end to end on a tiny teacher: the features equal encoder.features averaged over the probe
crops (SPEC §9), the ids file, CSV output, .npy and .h5 data, and every user error's message.

    python -m pytest -q tests/test_embed.py
"""
import csv

import numpy as np
import pytest
import torch

from data.load import load_scans
from data.scans import Scans
import embed
from test_probe import _error as probe_error
from data import synthetic
from training.checkpoint import load_teacher, save_teacher
from encoder import Encoder, EncoderConfig
from data.networks import default_network_map
from data.preprocess import probe_crops
from test_h5 import IDS, write_authors_h5

NET_MAP = np.repeat(np.arange(3), 4)          # 12 ROIs in 3 networks
CONFIG = EncoderConfig(dim=32, depth=1, heads=1, proj_hidden=64)


def _teacher(path, m):
    torch.manual_seed(0)
    save_teacher(path, Encoder(CONFIG, m), m, step=3, train_config={})
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _teacher(tmp_path_factory.mktemp("run") / "teacher.pt", NET_MAP)


@pytest.fixture
def npy(tmp_path):
    """5 scans of 12 ROIs, NaN-padded, one shorter than a crop; ids beside them (one holds a comma)."""
    rng = np.random.default_rng(0)
    lengths = [130, 100, 60, 150, 110]
    pad = np.arange(150)[None, None, :] >= np.array(lengths)[:, None, None]   # (S, 1, T)
    x = np.where(pad, np.nan, rng.normal(5.0, 1.0, (5, 12, 150))).astype(np.float32)
    np.save(tmp_path / "scans.npy", x)
    ids = ["a", "b", "c,d", "e", "f"]
    (tmp_path / "scans_subjects.txt").write_text("\n".join(ids) + "\n")
    return tmp_path / "scans.npy", ids


def _expected(ckpt, scans):
    """encoder.features of every probe crop, averaged per scan: (S, 2D)."""
    encoder, _ = load_teacher(ckpt)
    crops = probe_crops(scans)                                        # (S, 8, C, T')
    with torch.no_grad():
        f = encoder.features(crops.flatten(0, 1))                          # (S·8, 2D)
    return f.reshape(len(scans), 8, -1).mean(1).numpy()


def test_npy_mean_over_crops_and_ids(ckpt, npy, tmp_path, capsys):
    path, ids = npy
    out = tmp_path / "emb" / "emb.npy"
    res = embed.main(["--ckpt", str(ckpt), "--data", str(path), "--out", str(out), "--device", "cpu",
                      "--precision", "fp32"])   # compared with fp32 features below
    emb = np.load(out)
    assert emb.shape == (5, 64) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, _expected(ckpt, load_scans(path)), rtol=1e-5, atol=1e-5)
    assert (tmp_path / "emb" / "emb_subjects.txt").read_text().splitlines() == ids
    assert res["files"] == [out, tmp_path / "emb" / "emb_subjects.txt", tmp_path / "emb" / "emb_config.json"]
    assert "Embedding 5 scans" in capsys.readouterr().out


def test_per_crop_csv(ckpt, npy, tmp_path):
    path, ids = npy
    out = tmp_path / "emb.csv"
    embed.main(["--ckpt", str(ckpt), "--data", str(path), "--out", str(out), "--per-crop", "--crops", "3",
                "--precision", "fp32"])
    emb = np.load(tmp_path / "emb.npy")
    assert emb.shape == (5, 3, 64)
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["subject", "crop"] + [f"f{i}" for i in range(64)] and len(rows) == 1 + 15
    assert [r[0] for r in rows[1:]] == [s for s in ids for _ in range(3)] and [r[1] for r in rows[1:4]] == ["0", "1", "2"]
    np.testing.assert_array_equal(np.array([r[2:] for r in rows[1:]], dtype=np.float32), emb.reshape(15, 64))
    embed.main(["--ckpt", str(ckpt), "--data", str(path), "--out", str(tmp_path / "mean.csv")])
    with open(tmp_path / "mean.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:2] == ["subject", "f0"] and len(rows) == 6 and rows[3][0] == "c,d"


def test_h5_in_the_authors_layout(tmp_path):
    ckpt = _teacher(tmp_path / "teacher.pt", default_network_map())
    p = tmp_path / "ukb.h5"
    x = write_authors_h5(p)
    res = embed.main(["--ckpt", str(ckpt), "--data", str(p), "--precision", "fp32"])
    out = tmp_path / "embeddings_ukb.npy"                                  # default: beside the checkpoint
    assert res["files"][0] == out and (tmp_path / "embeddings_ukb_subjects.txt").read_text().splitlines() == IDS
    ram = Scans(data=x, lengths=load_scans(p).lengths, subjects=IDS)
    np.testing.assert_allclose(np.load(out), _expected(ckpt, ram), rtol=1e-5, atol=1e-5)


def test_synthetic_cohort_by_default(ckpt, tmp_path, monkeypatch, capsys):
    folder = synthetic.make_synthetic_cohort(tmp_path / "syn", n_pretrain_subjects=2, scans_per_subject=1, n_probe=4,
                                        length_range=(100, 110), network_map=NET_MAP)
    monkeypatch.setattr(synthetic, "ensure_synthetic_cohort", lambda: folder)
    res = embed.main(["--ckpt", str(ckpt), "--out", str(tmp_path / "syn.npy")])
    assert res["features"].shape == (4, 64) and res["subjects"] == [f"probe{i:04d}" for i in range(4)]
    assert "SYNTHETIC" in capsys.readouterr().out


def test_synthetic_cohort_in_another_atlas(ckpt, tmp_path, monkeypatch, capsys):
    folder = synthetic.make_synthetic_cohort(tmp_path / "syn", n_pretrain_subjects=2, scans_per_subject=1, n_probe=4,
                                             length_range=(100, 110), network_map=np.repeat(np.arange(2), 4))
    monkeypatch.setattr(synthetic, "ensure_synthetic_cohort", lambda: folder)
    err = _error(["--ckpt", str(ckpt), "--out", str(tmp_path / "syn.npy")], capsys)
    assert "the data have 8 ROIs but the network map has 12 entries" in err
    assert "(the built-in synthetic cohort has the default 457 ROIs: pass --data)" in err


def _error(argv, capsys):
    return probe_error(argv, capsys, embed.main)


def test_user_errors(ckpt, npy, tmp_path, capsys):
    path, _ = npy
    base = ["--ckpt", str(ckpt), "--out", str(tmp_path / "e.npy")]
    assert f"no such file: {tmp_path / 'nope.npy'}" in _error(base + ["--data", str(tmp_path / "nope.npy")], capsys)
    write_authors_h5(tmp_path / "d.h5")
    err = _error(base + ["--data", str(tmp_path / "d.h5")], capsys)
    assert "the atlases give 457 ROIs (schaefer400 400 + tian3 50 + buckner7 7) but the network map has 12" in err
    assert "expected a name ending in .npy or .csv" in _error(base[:2] + ["--data", str(path), "--out", "e.parquet"],
                                                               capsys)
    np.savetxt(tmp_path / "map.txt", np.repeat(np.arange(4), 3), fmt="%d")
    err = _error(base + ["--data", str(path), "--networks", str(tmp_path / "map.txt")], capsys)
    assert "carries the network map it was trained with" in err
    np.savetxt(tmp_path / "same.txt", NET_MAP, fmt="%d")                    # its own map is accepted
    embed.main(base + ["--data", str(path), "--networks", str(tmp_path / "same.txt")])
    assert "--crops must be at least 1" in _error(base + ["--data", str(path), "--crops", "0"], capsys)
    for flag, value, why in (("--subjects", str(tmp_path / "ids.txt"), "carries its own ids"),
                             ("--tr", "0.72", "is at TR 2.0 s already"),
                             ("--layout", "STC", "is stored (scans, ROIs, time)")):   # without --data
        assert f"{flag} describes --data; the synthetic probe cohort {why}" in _error(base + [flag, value], capsys)

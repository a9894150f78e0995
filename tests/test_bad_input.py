"""Bad input the release's users meet: constant scans and ROIs (an error naming how many and which
file, before any work; a few constant ROIs a warning) and an --out that cannot be written (embed.py,
probe.py, train.py: a clear error before any work).

    python -m pytest -q tests/test_bad_input.py
"""
import logging

import numpy as np
import pytest

import embed
import probe
import train
from data.load import load_scans
from test_embed import ckpt  # noqa: F401  (fixture)
from test_probe import _error


def _scans(tmp_path, name="x.npy", **edit):
    x = np.random.default_rng(0).normal(size=(6, 12, 80)).astype(np.float32)   # (S, C, T)
    for key, value in edit.items():
        x[value] = 3.0
    np.save(tmp_path / name, x)
    return tmp_path / name


def test_constant_scans_and_rois(tmp_path, caplog):
    p = _scans(tmp_path, dead=(np.s_[[1, 4]]))
    with pytest.raises(ValueError, match=r"x.npy: 2 of 6 scans are constant in every ROI \(scan 1, scan 4\)"):
        load_scans(p)
    p = _scans(tmp_path, roi=np.s_[:, 5])
    with pytest.raises(ValueError, match=r"x.npy: 1 of 12 ROIs are constant \(or NaN\) in every one of 6 scans \(ROI 5\)"):
        load_scans(p)
    p = _scans(tmp_path, few=np.s_[2, 3:5])
    with caplog.at_level(logging.WARNING):
        load_scans(p)
    assert "1 of 6 scans have constant or uncovered ROIs (up to 2 of 12, e.g. scan 2)" in caplog.text
    (tmp_path / "f").mkdir()
    for i in range(3):
        np.savetxt(tmp_path / "f" / f"sub-{i}.csv", np.full((30, 4), 1.0) if i == 2 else np.random.rand(30, 4),
                   delimiter=",")
    with pytest.raises(ValueError, match=r"f: 1 of 3 scans are constant in every ROI \(sub-2.csv\)"):
        load_scans(tmp_path / "f")


def test_unwritable_out_before_any_work(ckpt, tmp_path, capsys, monkeypatch):  # noqa: F811
    (tmp_path / "file").write_text("")
    bad = tmp_path / "file" / "sub" / "out.npy"                                 # below a file: never writable
    monkeypatch.setattr("evaluation.options.load_scans", lambda *a, **k: pytest.fail("data read before --out checked"))
    err = _error(["--ckpt", str(ckpt), "--out", str(bad)], capsys, embed.main)
    assert f"--out {bad} cannot be written: {tmp_path / 'file'} is a file, not a folder" in err
    err = _error(["--ckpt", str(ckpt), "--task", "sz", "--out", str(bad.with_suffix(".json"))], capsys, probe.main)
    assert "cannot be written" in err
    (tmp_path / "dir.npy").mkdir()
    err = _error(["--ckpt", str(ckpt), "--out", str(tmp_path / "dir.npy")], capsys, embed.main)
    assert "dir.npy is a folder; give a file name" in err
    monkeypatch.setattr("train.load_scans", lambda *a, **k: pytest.fail("data read before --out checked"))
    with pytest.raises(SystemExit) as e:
        train.main(["--out", str(tmp_path / "file" / "run"), "--steps", "1"])
    assert e.value.code == 2 and "cannot be written" in capsys.readouterr().err

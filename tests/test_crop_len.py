"""--crop-len (encoder.set_crop_len): shorter inputs, P = T'/20 patches, the temporal embedding following P,
in embed.py and probe.py end to end; the errors.

    python -m pytest -q tests/test_crop_len.py
"""
import numpy as np
import torch

import embed
import probe
from data.load import load_scans
from data.preprocess import probe_crops
from encoder import sincos_embedding
from test_embed import ckpt  # noqa: F401  (fixture)
from test_probe import _error
from training.checkpoint import load_teacher


def _short_scans(tmp_path, n=24):
    """Task-block-like scans of 40 to 60 points, 12 ROIs, with a labels file."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(40, 61, n)
    x = np.where(np.arange(60)[None, None] >= lengths[:, None, None], np.nan,
                 rng.normal(size=(n, 12, 60))).astype(np.float32)                  # (S, C, T)
    np.save(tmp_path / "short.npy", x)
    (tmp_path / "labels.csv").write_text("y\n" + "\n".join(str(i % 2) for i in range(n)) + "\n")
    return tmp_path / "short.npy"


def test_crop_len_40_embed_and_probe(ckpt, tmp_path, capsys):  # noqa: F811
    path = _short_scans(tmp_path)
    res = embed.main(["--ckpt", str(ckpt), "--data", str(path), "--out", str(tmp_path / "e.npy"), "--crop-len", "40",
                      "--precision", "fp32", "--crops", "3"])
    assert "out of its training length" in capsys.readouterr().out and res["data"]["crop_len"] == 40
    encoder, _ = load_teacher(ckpt)
    encoder.set_crop_len(40)
    assert encoder.n_patches == 2 and torch.equal(encoder.time_embed, sincos_embedding(2, 32))
    crops = probe_crops(load_scans(path), None, 40, 3)                              # (S, 3, C, 40)
    with torch.no_grad():
        expected = encoder.features(crops.flatten(0, 1)).reshape(len(crops), 3, -1).mean(1).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), expected, rtol=1e-5, atol=1e-5)
    rep = probe.main(["--ckpt", str(ckpt), "--data", str(path), "--labels", str(tmp_path / "labels.csv"),
                      "--task", "y", "--crop-len", "40", "--repeats", "2", "--split", "1:1:1", "--no-cache",
                      "--out", str(tmp_path / "p.json"), "--bandpass", "0.01", "0.1"])
    assert rep["config"]["crop_len"] == 40 and "teacher" in rep["methods"]
    assert rep["config"]["bandpass"] == [0.01, 0.1]                                # the filter, in the report


def test_crop_len_errors(ckpt, tmp_path, capsys):  # noqa: F811
    path = _short_scans(tmp_path)
    for bad in ("30", "0"):
        err = _error(["--ckpt", str(ckpt), "--data", str(path), "--crop-len", bad], capsys, embed.main)
        assert f"--crop-len {bad}: must be a multiple of the patch length 20, at least 20" in err

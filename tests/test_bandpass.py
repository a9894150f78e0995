"""--bandpass (data/bandpass.py): the matrix form is scipy's sosfiltfilt, padding included; a 0.2 Hz sine
goes and a 0.05 Hz one stays; the settings are stored; the errors.

    python -m pytest -q tests/test_bandpass.py
"""
import json

import numpy as np
import pytest
from scipy import signal

import embed
from data.bandpass import ORDER, bandpass_matrix, filter_scans, min_length
from data.load import load_scans
from test_embed import ckpt, npy  # noqa: F401  (fixtures)
from test_probe import _error


@pytest.mark.parametrize("n", [min_length(0.01, 0.1), 61, 200])
def test_matrix_form_equals_sosfiltfilt(n):
    x = np.random.default_rng(n).normal(3.0, 1.0, (5, n))
    sos = signal.butter(ORDER, [0.01, 0.1], btype="band", fs=0.5, output="sos")
    np.testing.assert_allclose(filter_scans(x, 0.01, 0.1), signal.sosfiltfilt(sos, x, axis=-1), rtol=0, atol=1e-10)
    assert bandpass_matrix(n, 0.01, 0.1).shape == (n, n)


def _amplitude(y, f, t):
    """Amplitude of the f Hz component of y (..., T) sampled at times t (s), by least squares."""
    basis = np.stack([np.sin(2 * np.pi * f * t), np.cos(2 * np.pi * f * t)], 1)   # (T, 2)
    coef = np.linalg.lstsq(basis, y.reshape(-1, len(t)).T, rcond=None)[0]       # (2, n)
    return np.hypot(*coef)


def test_removes_fast_keeps_slow(tmp_path):
    T = 300
    t = 2.0 * np.arange(T)                                                      # the 2.0 s grid
    slow, fast = np.sin(2 * np.pi * 0.05 * t), 0.8 * np.sin(2 * np.pi * 0.2 * t + 1.0)
    rng = np.random.default_rng(0)
    x = (5 + slow + fast + 0.01 * rng.normal(size=(3, 4, T))).astype(np.float32)  # (S, C, T)
    x[2, :, 250:] = np.nan                                                      # a shorter scan
    np.save(tmp_path / "x.npy", x)
    sc = load_scans(tmp_path / "x.npy", bandpass=(0.01, 0.1))
    assert sc.bandpass == (0.01, 0.1) and "bandpass" in sc.key
    y = sc.read([0, 1])[:, :, 50:250]                                           # away from the edges
    mid = t[50:250]
    assert np.allclose(_amplitude(y, 0.05, mid), 1.0, atol=0.05)                # passband: kept
    assert _amplitude(y, 0.2, mid).max() < 0.01                                 # 0.2 Hz: gone (0.8 before)
    assert np.isnan(sc.read([2])[0, :, 250:]).all() and np.isfinite(sc.read([2])[0, :, :250]).all()
    unfiltered = load_scans(tmp_path / "x.npy").read([0])[:, :, 50:250]
    assert _amplitude(unfiltered, 0.2, mid).min() > 0.75


def test_settings_stored_and_errors(ckpt, npy, tmp_path, capsys):  # noqa: F811
    path, _ = npy
    embed.main(["--ckpt", str(ckpt), "--data", str(path), "--out", str(tmp_path / "e.npy"), "--bandpass", "0.01", "0.1"])
    cfg = json.loads((tmp_path / "e_config.json").read_text())
    assert cfg["bandpass"] == [0.01, 0.1] and "Butterworth order 5" in cfg["bandpass_filter"]
    err = _error(["--ckpt", str(ckpt), "--data", str(path), "--bandpass", "0.1", "0.3"], capsys, embed.main)
    assert "--bandpass 0.1 0.3: need 0 < LOW < HIGH < 0.25 Hz" in err
    x = np.random.default_rng(0).normal(size=(2, 12, 80)).astype(np.float32)
    x[1, :, 30:] = np.nan
    np.save(tmp_path / "short.npy", x)
    err = _error(["--ckpt", str(ckpt), "--data", str(tmp_path / "short.npy"), "--bandpass", "0.01", "0.1"],
                 capsys, embed.main)
    assert f"scan 1 has 30 valid time points; --bandpass 0.01 0.1 needs at least {min_length(0.01, 0.1)}" in err

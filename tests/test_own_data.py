"""Bring your own data (README "Your own data"): a folder of per-scan (T, C) CSV files as nilearn or
XCP-D write them, of different lengths and at another TR, trains with networks clustered from the
data and probes with labels matched by subject id. Tiny model (D 32, depth 1)."""
import json

import numpy as np
import pytest
import torch

import kernels
import probe
import train
from conftest import TINY_RUN


def write_folder(folder, rng, n_subjects=16, C=30, k=3, tr=1.0):
    """Per-scan CSVs sub-XX_ses-Y_timeseries.csv (T, C) with a header row; ROIs in k planted networks.
    Returns the true network of every ROI and each subject's label."""
    folder.mkdir()
    truth = rng.permutation(np.arange(C) % k)
    label = rng.integers(0, 2, n_subjects)
    for s in range(n_subjects):
        for ses in range(1 + s % 2):                                       # 24 scans of 16 subjects
            T = int(rng.integers(220, 300))                                # 110-150 points at TR 2 s
            lat = rng.standard_normal((T, k))
            x = lat[:, truth] + 1.5 * rng.standard_normal((T, C))        # (T, C): time in rows
            np.savetxt(folder / f"sub-{s:02d}_ses-{ses}_timeseries.csv", x, delimiter=",",
                       header=",".join(f"roi{c}" for c in range(C)), comments="")
    return truth, label


def test_folder_of_csvs_trains_and_probes_by_subject_id(tmp_path, capsys):
    rng = np.random.default_rng(0)
    folder = tmp_path / "timeseries"
    truth, label = write_folder(folder, rng)
    out = tmp_path / "run"
    try:
        train.main(["--data", str(folder), "--tr", "1.0", "--networks", "auto:3", "--preset", "demo",
                    *TINY_RUN, "--steps", "2", "--out", str(out)])
    finally:
        kernels.set_enabled(False)
    assert "3 networks" in capsys.readouterr().out
    ckpt = torch.load(out / "teacher.pt", weights_only=True)
    learned = ckpt["network_map"].numpy()
    # the clustered map is the planted one up to renaming the networks
    assert len({(a, b) for a, b in zip(truth, learned)}) == 3
    assert (out / "network_fc.png").stat().st_size > 0

    labels = tmp_path / "participants.csv"                             # shuffled rows, BIDS ids
    rows = [f"sub-{s:02d},{y}" for s, y in enumerate(label)]
    labels.write_text("participant_id,dx\n" + "\n".join(rng.permutation(rows)) + "\n")
    rep = probe.main(["--ckpt", str(out / "teacher.pt"), "--data", str(folder), "--tr", "1.0",
                      "--labels", str(labels), "--task", "dx", "--repeats", "2", "--no-cache",
                      "--baselines", "none", "--max-iter", "100", "--out", str(tmp_path / "dx.json")])
    assert rep["config"]["n_subjects"] == 16 and rep["config"]["n_scans"] == 24
    saved = json.loads((tmp_path / "dx.json").read_text())
    assert len(saved["methods"]["teacher"]["repeats"]) == 2


def test_map_length_must_match_the_data(tmp_path, capsys):
    rng = np.random.default_rng(1)
    folder = tmp_path / "timeseries"
    write_folder(folder, rng, n_subjects=8)
    (tmp_path / "map.txt").write_text("\n".join(["0", "1"] * 20) + "\n")   # 40 entries, data have 30 ROIs
    with pytest.raises(SystemExit) as e:
        train.main(["--data", str(folder), "--networks", str(tmp_path / "map.txt"), "--preset", "demo",
                    *TINY_RUN, "--steps", "1", "--out", str(tmp_path / "run")])
    assert e.value.code == 2
    assert "40 entries but the data have 30 ROIs" in capsys.readouterr().err

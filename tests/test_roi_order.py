"""The ROI-order check (data/networks.check_order): a cohort whose cortical ROIs are shuffled gets a
warning in words naming the networks and the likely causes; the built-in cohort stays quiet; the
`python -m data.networks check` command prints the figure; never an error.

    python -m pytest -q tests/test_roi_order.py
"""
import numpy as np
import pytest

from data import synthetic
from data.load import load_scans
from data.networks import check_order, default_network_map, main


@pytest.fixture(scope="module")
def cohort():
    return load_scans(f"{synthetic.ensure_synthetic_cohort()}/probe.npy")


def test_quiet_on_the_builtin_cohort(cohort):
    fit, warning = check_order(cohort, default_network_map())
    assert warning is None and fit["better"].all() and fit["mean"] > 10 * fit["null_std"]


def test_warns_when_the_cortex_is_shuffled(cohort, tmp_path, capsys):
    x = np.array(cohort.data[:100])                                             # (S, 457, T)
    x[:, :400] = x[:, np.random.default_rng(0).permutation(400)]                 # 17- vs 7-network order, say
    np.save(tmp_path / "shuffled.npy", x)
    fit, warning = check_order(load_scans(tmp_path / "shuffled.npy"), default_network_map())
    assert fit["better"][7:].all() and fit["better"][:7].sum() <= 3              # subcortex, cerebellum intact
    assert "17-network order" in warning and "7-network order" in warning and "Vis" in warning
    main(["check", "--data", str(tmp_path / "shuffled.npy")])
    out = capsys.readouterr().out
    assert "within- minus between-network mean Fisher-z" in out and "no better than random" in out
    assert "warning: the ROI -> network map does not fit these data" in out


def test_absent_atlases_are_left_out(cohort, tmp_path, capsys):
    np.save(tmp_path / "cortex.npy", np.array(cohort.data[:60, :400]))
    main(["check", "--data", str(tmp_path / "cortex.npy"), "--atlases", "schaefer400"])
    out = capsys.readouterr().out
    assert "Subcortical" not in out and "fits the data better than random maps for every network" in out

"""ROI -> network maps: default layout, loading/validation of user maps, FC clustering, FC plot."""
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from data import networks


def test_default_map_counts_and_names():
    m = networks.default_network_map()
    assert m.dtype == np.int64 and m.shape == (457,)
    assert np.bincount(m).tolist() == [61, 77, 46, 47, 26, 52, 91, 50, 7]
    assert m[0] == 0 and m[199] == 6 and m[200] == 0 and m[399] == 6      # left then right hemisphere
    assert (m[400:450] == 7).all() and (m[450:] == 8).all()
    assert networks.network_names(m) == list(networks.DEFAULT_NETWORK_NAMES)
    assert networks.network_names([0, 1, 1, 2]) == ["net0", "net1", "net2"]


def test_load_default_and_files(tmp_path):
    assert np.array_equal(networks.load_network_map("default", 457), networks.default_network_map())
    m = np.array([2, 0, 1, 1, 0, 2, 3], dtype=np.int64)
    (tmp_path / "m.txt").write_text("\n".join(map(str, m)) + "\n")
    (tmp_path / "m.csv").write_text(",".join(map(str, m)))
    np.save(tmp_path / "m.npy", m.astype(np.int32))
    for name in ("m.txt", "m.csv", "m.npy"):
        out = networks.load_network_map(tmp_path / name, n_rois=7)
        assert out.dtype == np.int64 and np.array_equal(out, m), name
    assert np.array_equal(networks.load_network_map(str(tmp_path / "m.txt")), m)
    assert np.array_equal(networks.load_network_map(m.tolist()), m)
    assert np.array_equal(networks.load_network_map(m.astype(float)), m)  # whole-number floats are ids


@pytest.mark.parametrize("m, n_rois, match", [
    (np.zeros(400, dtype=int), 457, "400 entries but the data have 457 ROIs"),
    ([0, 1, 3, 3], None, r"without gaps.*missing: \[2\]"),
    ([1, 1, 2], None, r"missing: \[0\]"),
    ([0, -1, 1], None, ">= 0"),
    ([0, 1.5, 1], None, "must be integers"),
    (np.zeros((2, 3), dtype=int), None, "1-D"),
    ([], None, "empty"),
])
def test_validate_errors(m, n_rois, match):
    with pytest.raises(ValueError, match=match):
        networks.validate_network_map(m, n_rois)


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="default network map has 457 ROIs but the data have 400"):
        networks.load_network_map("default", 400)
    with pytest.raises(ValueError, match="not found"):
        networks.load_network_map(tmp_path / "nope.txt")
    (tmp_path / "bad.txt").write_text("0\n1\nvis\n")
    with pytest.raises(ValueError, match=r"line 3: 'vis' is not an integer"):
        networks.load_network_map(tmp_path / "bad.txt")
    (tmp_path / "float.txt").write_text("0\n1.5\n")
    with pytest.raises(ValueError, match="not an integer"):
        networks.load_network_map(tmp_path / "float.txt")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="empty"):
        networks.load_network_map(tmp_path / "empty.txt")
    (tmp_path / "short.txt").write_text("0\n1\n")
    with pytest.raises(ValueError, match="short.txt.*2 entries but the data have 457 ROIs"):
        networks.load_network_map(tmp_path / "short.txt", n_rois=457)
    (tmp_path / "gap.txt").write_text("0\n2\n")
    with pytest.raises(ValueError, match=r"missing: \[1\]"):
        networks.load_network_map(tmp_path / "gap.txt")


def _planted_fc(seed, C=120, k=6, T=300, noise=1.5):
    """Group-mean FC of ROIs = shared block signal + independent noise (within-block r ~ 0.3)."""
    rng = np.random.default_rng(seed)
    truth = rng.permutation(np.arange(C) % k)                          # blocks scattered over ROIs
    fcs = []
    for _ in range(4):                                                 # 4 "subjects"
        x = rng.standard_normal((k, T))[truth] + noise * rng.standard_normal((C, T))  # (C, T)
        fcs.append(np.corrcoef(x))
    return np.mean(fcs, 0), truth


def test_cluster_networks_recovers_planted_blocks():
    fc, truth = _planted_fc(0)
    m = networks.cluster_networks(fc, 6, seed=0)
    assert m.dtype == np.int64 and sorted(np.unique(m)) == list(range(6))
    assert adjusted_rand_score(truth, m) >= 0.9
    _, first = np.unique(m, return_index=True)
    assert (np.diff(first) > 0).all()                                  # ids in order of first appearance
    assert np.array_equal(networks.cluster_networks(fc, 6, seed=0), m)  # deterministic for a seed


def test_cluster_networks_errors():
    with pytest.raises(ValueError, match="square"):
        networks.cluster_networks(np.zeros((3, 4)), 2)
    with pytest.raises(ValueError, match="k must be in 2..3"):
        networks.cluster_networks(np.eye(3), 5)
    with pytest.raises(ValueError, match="NaN"):
        networks.cluster_networks(np.full((3, 3), np.nan), 2)


def test_plot_network_fc(tmp_path):
    fc, truth = _planted_fc(1, C=30, k=3, T=100)
    path = tmp_path / "fc.png"
    networks.plot_network_fc(fc, truth, path, names=["a", "b", "c"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

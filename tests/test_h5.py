"""The authors' HDF5 datasets (data/h5.py): the 457-ROI concatenation, lazy reads, labels for
probe.py, and every input error's message (SPEC §1, §2).

    python -m pytest -q tests/test_h5.py
"""
import h5py
import numpy as np
import pytest
import torch

from data.load import load_scans
from data.scans import Scans
from data import h5 as h5data
from data import labels
import probe
from training.checkpoint import save_teacher
from encoder import Encoder, EncoderConfig
from data.networks import default_network_map
from training.batches import TrainBatches
from data.preprocess import probe_crops
from data.connectivity import scan_fc

LENGTHS = [130, 100, 60, 25, 130, 90]
ATLAS_ROIS = {"schaefer400": 400, "tian3": 50, "buckner7": 7}
IDS = [f"sub-{i // 2:03d}" for i in range(len(LENGTHS))]      # two scans per subject


def write_authors_h5(path, lengths=LENGTHS, atlases=ATLAS_ROIS, ids=True, seed=0, **extra):
    """An .h5 file as the authors' example.ipynb writes one: timeseries/<atlas> (S, C_atlas, T) float16,
    gzip, NaN end-padded; long_subject_id as bytes (ids=False: none; a list: those); sex_bi and age
    labels; `extra`: more datasets. Returns the (S, sum C, T) concatenation, in the atlases' order."""
    rng = np.random.default_rng(seed)
    S, T = len(lengths), max(lengths)
    pad = np.arange(T)[None, None, :] >= np.asarray(lengths)[:, None, None]   # (S, 1, T)
    blocks = []
    with h5py.File(path, "w") as f:
        for name, C in atlases.items():
            x = np.where(pad, np.nan, rng.normal(10.0, 2.0, (S, C, T))).astype(np.float16)   # (S, C, T)
            f.create_dataset(f"timeseries/{name}", data=x, compression="gzip")
            blocks.append(x)
        if ids is not False:
            f["long_subject_id"] = np.array([s.encode() for s in (IDS[:S] if ids is True else ids)])
        f["sex_bi"] = np.arange(S) // 2 % 2
        f["age"] = np.linspace(20.0, 70.0, S)
        for name, v in extra.items():
            f[name] = v
    return np.concatenate(blocks, axis=1)


@pytest.fixture
def h5(tmp_path):
    p = tmp_path / "ukb.h5"
    return p, write_authors_h5(p)


# ---------------------------------------------------------------- layout

def test_atlases_concatenated_in_order_with_lengths_and_ids(h5):
    p, x = h5
    sc = load_scans(p)
    assert sc.data.shape == (6, 457, 130) and sc.data.dtype == np.float16 and sc.n_rois == 457
    assert sc.lengths.tolist() == LENGTHS and sc.subjects == IDS and sc.n_subjects == 3
    assert sc.ids_from_data                                                 # long_subject_id
    np.testing.assert_array_equal(sc.read(np.arange(6), None), x)          # NaN padding included
    with h5py.File(p) as f:                                                 # schaefer400, tian3, buckner7
        np.testing.assert_array_equal(sc.read([1], None)[0, 400:450], f["timeseries/tian3"][1])
        np.testing.assert_array_equal(sc.read([1], None)[0, 450:], f["timeseries/buckner7"][1])
    # everything downstream reads it like the same array in RAM
    ram = Scans(data=x, lengths=sc.lengths, subjects=sc.subjects)
    torch.testing.assert_close(probe_crops(sc, [3, 0]), probe_crops(ram, [3, 0]))
    np.testing.assert_array_equal(scan_fc(sc, [2]), scan_fc(ram, [2]))
    for resident in (True, False):
        x1, x2 = TrainBatches(sc, resident=resident, augment=False).next_batch(2)
        assert x1.shape == x2.shape == (2, 457, 100) and torch.isfinite(x1).all()


def test_ts_len_caps_the_valid_length(tmp_path):
    p = tmp_path / "d.h5"
    write_authors_h5(p, ts_len=np.array([120, 100, 60, 25, 40, 200]))
    assert load_scans(p).lengths.tolist() == [120, 100, 60, 25, 40, 90]


def test_indexing_like_an_array(h5):
    p, x = h5
    arr = load_scans(p).data
    assert not isinstance(arr, np.ndarray) and len(arr) == 6
    np.testing.assert_array_equal(arr[[4, 1, 4]], x[[4, 1, 4]])            # unsorted, repeated
    np.testing.assert_array_equal(arr[2, :3, :5], x[2, :3, :5])
    np.testing.assert_array_equal(arr[-1], x[-1])
    np.testing.assert_array_equal(arr[1:3, 400:], x[1:3, 400:])
    assert arr[np.array([], dtype=np.int64)].shape == (0, 457, 130)


def _rows(key, n):
    """Scan rows an h5py read asked for."""
    rows = key[0] if isinstance(key, tuple) else key
    return set(range(*rows.indices(n))) if isinstance(rows, slice) else set(np.atleast_1d(rows).tolist())


def test_reads_are_lazy(h5, monkeypatch):
    p, _ = h5
    calls = []
    read = h5py.Dataset.__getitem__

    def spy(self, key, *a, **k):
        calls.append((self.name, key))
        return read(self, key, *a, **k)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    monkeypatch.setattr("data.load.CONSTANT_SAMPLE", 2)
    sc = load_scans(p)
    series = [(n, k) for n, k in calls if n.startswith("/timeseries/")]
    lengths = [(n, k) for n, k in series if isinstance(k, tuple)]
    assert lengths and all(n == "/timeseries/schaefer400" and k[1] == 0 for n, k in lengths)   # ROI 0 only
    whole = set().union(*(_rows(k, 6) for _, k in series if not isinstance(k, tuple)))
    assert whole == {0, 5}                       # the constant-ROI check reads its sample only
    calls.clear()
    sc.read([4, 1])
    assert sorted(n for n, _ in calls) == ["/timeseries/buckner7", "/timeseries/schaefer400", "/timeseries/tian3"]
    assert all(_rows(k, 6) == {1, 4} for _, k in calls)                     # only the scans asked for
    calls.clear()
    sc.read([3, 2])
    assert all(_rows(k, 6) == {2, 3} and isinstance(k, slice) for _, k in calls)   # consecutive: one slice


def test_tr_resampling_matches_the_npy_path(h5, tmp_path):
    p, x = h5
    np.save(tmp_path / "same.npy", x)
    sc, ref = load_scans(p, tr=3.0), load_scans(tmp_path / "same.npy", tr=3.0)
    assert isinstance(sc.data, np.ndarray) and sc.lengths.tolist() == np.rint(np.array(LENGTHS) * 1.5).tolist()
    np.testing.assert_array_equal(sc.data, ref.data)
    assert sc.subjects == IDS


# ---------------------------------------------------------------- labels

def test_label_datasets(h5, tmp_path):
    p, _ = h5
    sc = load_scans(p)
    assert h5data.label_names(p, 6) == ["age", "sex_bi"]
    values, subjects, notes = labels.task_labels("sex_bi", None, sc)
    assert values == ["0", "0", "1", "1", "0", "0"] and subjects == IDS and notes == []
    assert labels.task_labels("age", None, sc)[0][:2] == ["20", "30"]
    q = tmp_path / "nested.h5"
    write_authors_h5(q, **{"labels/sex": np.array([b"M", b"F", b"n/a"] * 2), "labels/iq": np.array([1.5, np.nan] * 3)})
    sq = load_scans(q)
    assert labels.task_labels("labels/sex", None, sq)[0] == ["M", "F", None] * 2
    assert labels.task_labels("labels/iq", None, sq)[0] == ["1.5", None] * 3
    csv = tmp_path / "labels.csv"                                           # --labels wins over the file's own
    csv.write_text("subject,sex_bi\n" + "".join(f"sub-{i:03d},{'MF'[i % 2]}\n" for i in range(3)))
    assert labels.task_labels("sex_bi", csv, sc)[0] == ["M", "M", "F", "F", "M", "M"]


@pytest.fixture(scope="module")
def ckpt457(tmp_path_factory):
    torch.manual_seed(0)
    m = default_network_map()
    path = tmp_path_factory.mktemp("run") / "teacher.pt"
    save_teacher(path, Encoder(EncoderConfig(dim=32, depth=1, heads=1, proj_hidden=64), m), m, step=1,
                 train_config={})
    return path


def test_probe_cli_reads_labels_from_the_h5(ckpt457, tmp_path, capsys):
    p = tmp_path / "cohort.h5"
    write_authors_h5(p, lengths=[100 + i for i in range(24)], ids=[f"s{i:02d}" for i in range(24)])
    rep = probe.main(["--ckpt", str(ckpt457), "--data", str(p), "--task", "sex_bi", "--repeats", "1", "--crops", "2",
                      "--baselines", "none", "--no-cache", "--out", str(tmp_path / "sex.json")])
    assert rep["kind"] == "classification" and rep["config"]["n_subjects"] == 24
    assert rep["config"]["labels"] == str(p.resolve())
    with pytest.raises(SystemExit):
        probe.main(["--ckpt", str(ckpt457), "--data", str(p), "--task", "sz", "--no-cache"])
    assert "unknown task 'sz'" in capsys.readouterr().err


# ---------------------------------------------------------------- errors

def test_errors(h5, tmp_path):
    p, _ = h5
    q = tmp_path / "no_atlas.h5"
    write_authors_h5(q, atlases={"aal116": 116})
    with pytest.raises(ValueError, match=r"holds none of timeseries/schaefer400, .*\(found in timeseries/: aal116\)"):
        load_scans(q)
    q = tmp_path / "small_tian.h5"
    write_authors_h5(q, atlases={"schaefer400": 400, "tian3": 16})
    with pytest.raises(ValueError, match=r"timeseries/tian3 has 16 ROIs, but with buckner7 absent each atlas present "
                                         r"needs its full 50 ROIs"):
        load_scans(q)
    with pytest.raises(ValueError, match=r"the atlases give 457 ROIs \(schaefer400 400 \+ tian3 50 \+ buckner7 7\) "
                                         r"but the network map has 400 entries"):
        load_scans(p, n_rois=400)
    with pytest.raises(ValueError, match=r"unknown task 'sz': .* no such label dataset; available: age, sex_bi"):
        h5data.read_label(p, "sz", 6)
    with pytest.raises(ValueError, match="unknown task 'long_subject_id'"):
        h5data.read_label(p, "long_subject_id", 6)
    q = tmp_path / "short_label.h5"
    write_authors_h5(q, site=np.arange(5))
    assert "site" not in h5data.label_names(q, 6)
    with pytest.raises(ValueError, match="label dataset 'site' has 5 values but the file has 6 scans"):
        h5data.read_label(q, "site", 6)
    q = tmp_path / "short_ids.h5"
    write_authors_h5(q, ids=IDS[:5])
    with pytest.raises(ValueError, match=r"'long_subject_id' has shape \(5,\) but the file has 6 scans"):
        load_scans(q)
    assert load_scans(q, subjects=list("abcdef")).subjects == list("abcdef")   # ids given: the file's unused
    q = tmp_path / "no_ids.h5"
    write_authors_h5(q, ids=False)
    with pytest.raises(ValueError, match="no 'long_subject_id' dataset .* pass .*--subjects"):
        load_scans(q)
    assert load_scans(q, subjects=list("abcdef")).subjects == list("abcdef")
    with pytest.raises(ValueError, match="--layout applies to a single .npy"):
        load_scans(p, layout="STC")
    (tmp_path / "garbage.h5").write_bytes(b"not hdf5" * 10)
    with pytest.raises(ValueError, match="cannot read as an HDF5 file"):
        load_scans(tmp_path / "garbage.h5")


def test_errors_in_ids_and_ts_len(tmp_path):
    q = tmp_path / "q.h5"
    write_authors_h5(q, ts_len=np.array([120.0, np.nan, 60, 25, 40, 90]))
    with pytest.raises(ValueError, match=r"'ts_len' of scan 1 is nan; it needs the valid length of each scan as a "
                                         r"whole number of time points >= 0"):
        load_scans(q)
    write_authors_h5(q, ts_len=np.array([120, 100, -1, 25, 40, 90]))
    with pytest.raises(ValueError, match=r"'ts_len' of scan 2 is -1; it needs"):
        load_scans(q)
    write_authors_h5(q, ts_len=np.array([120, 100, 60, 25.5, 40, 90]))
    with pytest.raises(ValueError, match=r"'ts_len' of scan 3 is 25.5; it needs"):
        load_scans(q)
    write_authors_h5(q, ts_len=np.array([b"a"] * 6))
    with pytest.raises(ValueError, match=r"'ts_len' has dtype \|S1; it needs the valid length"):
        load_scans(q)
    write_authors_h5(q, ids=False, long_subject_id=np.array([1.0, 1.0, 2.0, np.nan, 3.0, 3.0]))
    with pytest.raises(ValueError, match=r"'long_subject_id' of scan 3 is nan, not an id; every scan needs its "
                                         r"subject's id \(or pass the ids as a text file, --subjects\)"):
        load_scans(q)
    assert load_scans(q, subjects=list("aabbcc")).subjects == list("aabbcc")   # ids given: NaN ones unused
    for name in ("long_subject_id", "ts_len"):
        write_authors_h5(q, ids=False)
        with h5py.File(q, "a") as f:
            f.create_group(name)
        with pytest.raises(ValueError, match=f"'{name}' is a group; it must be a dataset of exactly one value per "
                                             f"scan, in scan order"):
            load_scans(q, subjects=None if name == "long_subject_id" else list("aabbcc"))


def test_errors_in_the_series(tmp_path):
    q = tmp_path / "other_t.h5"
    write_authors_h5(q)
    with h5py.File(q, "a") as f:
        del f["timeseries/tian3"]
        f["timeseries/tian3"] = np.zeros((6, 50, 90), dtype=np.float16)
    with pytest.raises(ValueError, match=r"timeseries/tian3 has shape \(6, 50, 90\) but timeseries/schaefer400 has "
                                         r"\(6, 400, 130\); all atlases need the same scans and time points"):
        load_scans(q)
    with h5py.File(q, "a") as f:
        del f["timeseries/tian3"]
        f["timeseries/tian3"] = np.zeros((6, 50), dtype=np.float16)
    with pytest.raises(ValueError, match=r"timeseries/tian3 must be a 3-D float array \(scans, ROIs, time\); "
                                         r"got shape \(6, 50\)"):
        load_scans(q)
    write_authors_h5(q, lengths=[130, 10, 60])
    with pytest.raises(ValueError, match="scan 1 has 10 valid time points, fewer than one patch"):
        load_scans(q)
    write_authors_h5(q, lengths=[130, 0, 60])
    with pytest.raises(ValueError, match="scan 1 is all NaN"):
        load_scans(q)
    for shape, what in (((0, 400, 130), "scans"), ((6, 400, 0), "time points")):
        write_authors_h5(q)
        with h5py.File(q, "a") as f:
            for name, C in ATLAS_ROIS.items():
                del f[f"timeseries/{name}"]
                f[f"timeseries/{name}"] = np.zeros((shape[0], C, shape[2]), dtype=np.float16)
        with pytest.raises(ValueError, match=rf"timeseries/schaefer400 has shape \({shape[0]}, 400, {shape[2]}\): "
                                             rf"no {what}"):
            load_scans(q)

"""Loading (data/load.py, data/files.py, data/scans.py): arrays, folders and TR resampling, subject
ids, and every input error's message (SPEC §1). What the method does to scans: test_scans.py; the synthetic cohort:
test_synthetic.py; .h5 files: test_h5.py.

    python -m pytest -q tests/test_data.py
"""
import logging

import numpy as np
import pytest
import torch

from data.load import load_scans, subjects_path
from data.preprocess import zscore


def padded(lengths, C=6, seed=0, dtype=np.float32):
    """(S, C, max T) random scans with a DC offset, NaN-padded to the longest."""
    rng = np.random.default_rng(seed)
    T = max(lengths)
    x = rng.normal(10.0, 2.0, (len(lengths), C, T)).astype(dtype)
    for i, n in enumerate(lengths):
        x[i, :, n:] = np.nan
    return x


@pytest.fixture
def npy(tmp_path):
    x = padded([120, 60, 25, 120], dtype=np.float16)
    p = tmp_path / "scans.npy"
    np.save(p, x)
    return p, x


def test_npy_is_memory_mapped_with_lengths_and_subject_sidecar(npy):
    p, x = npy
    sc = load_scans(p)
    assert isinstance(sc.data, np.memmap) and sc.data.dtype == np.float16
    assert sc.lengths.tolist() == [120, 60, 25, 120] and sc.lengths.dtype == np.int64
    assert len(sc) == 4 and sc.n_rois == 6 and sc.subjects == [f"scan{i:05d}" for i in range(4)]
    assert sc.source == str(p.resolve()) and sc.key
    p.with_name("scans_subjects.txt").write_text("a\na\nb\nc\n")
    assert load_scans(p).subjects == ["a", "a", "b", "c"]
    assert load_scans(p, subjects=["w", "x", "y", "z"]).subjects == ["w", "x", "y", "z"]


def test_ids_from_data_says_where_the_subject_ids_came_from(npy, tmp_path):
    p, _ = npy
    assert subjects_path(p) == tmp_path / "scans_subjects.txt"
    assert not load_scans(p).ids_from_data                            # made up: scan00000, ...
    assert load_scans(p, subjects=["w", "x", "y", "z"]).ids_from_data
    subjects_path(p).write_text("a\na\nb\nc\n")
    assert load_scans(p).ids_from_data
    (tmp_path / "f").mkdir()
    np.savetxt(tmp_path / "f" / "sub-01.csv", np.arange(120.0).reshape(30, 4), delimiter=",")
    assert load_scans(tmp_path / "f").ids_from_data                   # BIDS file names


def test_stc_layout_is_a_lazy_transpose(npy, tmp_path):
    p, x = npy
    q = tmp_path / "stc.npy"
    np.save(q, x.transpose(0, 2, 1))
    sc = load_scans(q, layout="STC")
    assert sc.data.shape == x.shape and isinstance(sc.data, np.memmap)
    np.testing.assert_array_equal(sc.read([3, 1]), x[[3, 1]].astype(np.float32))
    assert sc.lengths.tolist() == [120, 60, 25, 120]


def test_folder_of_csv_tsv_npy_files(tmp_path, caplog):
    rng = np.random.default_rng(1)
    a, b, c, d = (rng.normal(size=(n, 5)).astype(np.float32) for n in (40, 33, 50, 21))
    names = [f"roi{i}" for i in range(5)]
    (tmp_path / "sub-01_ses-1_timeseries.csv").write_text(
        ",".join(names) + "\n" + "\n".join(",".join(f"{v:.6f}" for v in r) for r in a) + "\n")
    b_txt = [["n/a" if j == 2 else f"{v:.6f}" for j, v in enumerate(r)] for r in b]   # ROI 2 not covered
    (tmp_path / "sub-01_ses-2_timeseries.tsv").write_text("\n".join("\t".join(r) for r in b_txt) + "\n")
    np.save(tmp_path / "sub-02_task-rest_bold.npy", c)
    np.savetxt(tmp_path / "other.csv", d, delimiter=",")
    (tmp_path / "notes.json").write_text("{}")                   # ignored: not a scan file
    with caplog.at_level(logging.WARNING, logger="brain_semantoks.data"):
        sc = load_scans(tmp_path)
    assert sc.files == ["other.csv", "sub-01_ses-1_timeseries.csv", "sub-01_ses-2_timeseries.tsv",
                        "sub-02_task-rest_bold.npy"]
    assert sc.subjects == ["other", "01", "01", "02"]
    assert sc.lengths.tolist() == [21, 40, 33, 50] and sc.n_rois == 5 and sc.roi_names == names
    np.testing.assert_allclose(sc.data[1, :, :40], a.T, atol=1e-5)
    np.testing.assert_array_equal(sc.data[3, :, :50], c.T)
    assert np.isnan(sc.data[1, :, 40:]).all() and np.isnan(sc.data[2, 2, :33]).all()
    assert sc.zeroed_rois == 1 and "no coverage" in caplog.text
    z = zscore(sc.data[2:3], sc.lengths[2:3])
    assert torch.isfinite(z).all() and (z[0, 2] == 0).all()     # the uncovered ROI is flat


@pytest.mark.parametrize("tr", [0.72, 3.0])
def test_tr_resampling_length_and_content(tmp_path, tr):
    T = 300
    t = np.arange(T) * tr
    sig = np.sin(2 * np.pi * t / 60.0)                            # 60 s period, well below Nyquist
    x = np.stack([sig + 0.01 * k for k in range(4)])[None].astype(np.float32)   # (1, C, T)
    np.save(tmp_path / "a.npy", x)
    sc = load_scans(tmp_path / "a.npy", tr=tr)
    n = round(T * tr / 2.0)
    assert sc.lengths.tolist() == [n] and sc.data.shape == (1, 4, n)
    expect = np.sin(2 * np.pi * np.arange(n) * 2.0 / 60.0)
    assert np.abs(sc.data[0, 0, 5:-5] - expect[5:-5]).max() < 0.05
    (tmp_path / "f").mkdir()
    np.savetxt(tmp_path / "f" / "sub-1.tsv", x[0].T, delimiter="\t")
    assert load_scans(tmp_path / "f", tr=tr).lengths.tolist() == [n]
    assert load_scans(tmp_path / "a.npy", tr=2.0).lengths.tolist() == [T]


# ---------------------------------------------------------------------------------------------- bad input

def save(tmp_path, x, name="bad.npy"):
    np.save(tmp_path / name, x)
    return tmp_path / name


def test_missing_paths(tmp_path):
    with pytest.raises(ValueError, match="no such file: .*nope.npy"):
        load_scans(tmp_path / "nope.npy")
    with pytest.raises(ValueError, match="no such file"):
        load_scans(save(tmp_path, padded([30])), subjects=tmp_path / "ids.txt")


def test_wrong_ndim_dtype_layout_and_tr(tmp_path):
    with pytest.raises(ValueError, match=r"expected a 3-D array \(scans, ROIs, time\) .*got shape \(5, 30\)"):
        load_scans(save(tmp_path, np.zeros((5, 30), np.float32)))
    with pytest.raises(ValueError, match="expected float16/float32/float64 values, got dtype int64"):
        load_scans(save(tmp_path, np.zeros((2, 3, 30), np.int64)))
    with pytest.raises(ValueError, match="layout must be 'SCT'"):
        load_scans(save(tmp_path, padded([30])), layout="CTS")
    with pytest.raises(ValueError, match="tr must be a positive number"):
        load_scans(save(tmp_path, padded([30])), tr=-1)
    (tmp_path / "x.txt").write_text("1 2 3")
    with pytest.raises(ValueError, match="expected an .npy file"):
        load_scans(tmp_path / "x.txt")
    (tmp_path / "trunc.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match="trunc.npy: cannot read as .npy"):
        load_scans(tmp_path / "trunc.npy")


def test_an_empty_axis(tmp_path):
    for shape, layout, what in (((3, 0, 30), "SCT", "ROIs"), ((3, 6, 0), "SCT", "time points"),
                                ((0, 6, 30), "SCT", "scans"), ((3, 30, 0), "STC", "ROIs")):
        p = save(tmp_path, np.zeros(shape, np.float32))
        with pytest.raises(ValueError, match=rf"{p.name}: shape \({shape[0]}, {shape[1]}, {shape[2]}\) "
                                             rf"\(scans, .*\) holds no {what}$"):
            load_scans(p, layout=layout)


def test_all_nan_scan(tmp_path):
    x = padded([40, 40, 40])
    x[1] = np.nan
    with pytest.raises(ValueError, match="scan 1 is all NaN"):
        load_scans(save(tmp_path, x))


def test_scan_shorter_than_one_patch(tmp_path):
    with pytest.raises(ValueError, match=r"scan 1 has 12 valid time points, fewer than one patch \(20\)"):
        load_scans(save(tmp_path, padded([40, 12, 50])))
    with pytest.raises(ValueError, match="scan 0 has 18 valid time points after resampling to TR 2.0 s"):
        load_scans(save(tmp_path, padded([50, 60])), tr=0.72)


def test_nan_in_the_middle(tmp_path):
    x = padded([40, 40])
    x[1, 0, 10] = np.nan                                           # a gap in ROI 0: not end padding
    with pytest.raises(ValueError, match=r"scan 1: NaN in the middle of the scan \(ROI 0 is NaN at time 10"):
        load_scans(save(tmp_path, x))
    x = padded([40, 40])
    x[0, 3, 25] = np.nan
    with pytest.raises(ValueError, match=r"scan 0: NaN in the middle of the scan \(ROI 3, time 25"):
        load_scans(save(tmp_path, x))
    x = padded([40, 40])
    x[0, 2, 5] = np.inf
    with pytest.raises(ValueError, match="scan 0: infinite value at ROI 2, time 5"):
        load_scans(save(tmp_path, x))


def test_roi_count_differs_from_network_map(tmp_path):
    with pytest.raises(ValueError, match="data have 6 ROIs but the network map has 457 entries"):
        load_scans(save(tmp_path, padded([30])), n_rois=457)
    (tmp_path / "f").mkdir()
    np.savetxt(tmp_path / "f" / "sub-01.tsv", np.ones((30, 400)), delimiter="\t")
    with pytest.raises(ValueError, match="data have 400 ROIs but the network map has 457 entries"):
        load_scans(tmp_path / "f", n_rois=457)


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(ValueError, match="folder contains no .npy/.csv/.tsv files"):
        load_scans(tmp_path / "empty")
    f = tmp_path / "mixed"
    f.mkdir()
    np.save(f / "sub-01.npy", np.ones((30, 5), np.float32))
    np.save(f / "sub-02.npy", np.ones((30, 4), np.float32))
    with pytest.raises(ValueError, match="sub-02.npy: has 4 ROIs .* but sub-01.npy has 5"):
        load_scans(f)
    g = tmp_path / "g"
    g.mkdir()
    np.save(g / "sub-01.npy", np.ones((2, 30, 5), np.float32))
    with pytest.raises(ValueError, match=r"sub-01.npy: expected a 2-D array \(time, ROIs\)"):
        load_scans(g)
    for dtype in (np.complex64, np.int32, "U3"):   # once cast, truncated or a numpy traceback without a file name
        np.save(g / "sub-01.npy", np.ones((30, 5)).astype(dtype))
        with pytest.raises(ValueError, match=f"sub-01.npy: expected float16/float32/float64 values, got dtype "
                                             f"{np.dtype(dtype)}"):
            load_scans(g)
    h = tmp_path / "h"
    h.mkdir()
    (h / "sub-01.csv").write_text("a,b\n1,2\n3,x\n")
    with pytest.raises(ValueError, match="sub-01.csv: cannot parse as a CSV table"):
        load_scans(h)
    k = tmp_path / "k"
    k.mkdir()
    np.savetxt(k / "sub-01_run-1.tsv", np.r_[np.ones((25, 3)), np.full((1, 3), np.nan), np.ones((5, 3))],
               delimiter="\t")
    with pytest.raises(ValueError, match=r"sub-01_run-1.tsv: NaN in the middle"):
        load_scans(k)
    np.savetxt(k / "sub-01_run-1.tsv", np.ones((10, 3)), delimiter="\t")
    with pytest.raises(ValueError, match=r"sub-01_run-1.tsv has 10 valid time points, fewer than one patch"):
        load_scans(k)
    (k / "sub-01_run-1.tsv").write_text("roi_a\troi_b\n")
    with pytest.raises(ValueError, match="sub-01_run-1.tsv: no time points"):
        load_scans(k)


def test_subject_ids_must_match_the_scans(tmp_path):
    with pytest.raises(ValueError, match="got 3 subject ids for 4 scans"):
        load_scans(save(tmp_path, padded([30] * 4)), subjects=["a", "b", "c"])
    (tmp_path / "bad_subjects.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="bad_subjects.txt: got 2 subject ids for 4 scans"):
        load_scans(tmp_path / "bad.npy")


def test_folder_header_order_must_agree_and_progress_is_shown(tmp_path, capsys):
    (tmp_path / "sub-01.csv").write_text("a,b\n" + "1,2\n" * 25)
    (tmp_path / "sub-02.csv").write_text("a,c\n" + "1,2\n" * 25)
    with pytest.raises(ValueError, match=r"sub-02.csv: header ROI names differ from sub-01.csv's \(column 1: 'c'"):
        load_scans(tmp_path)
    big = tmp_path / "big"
    big.mkdir()
    x = np.random.default_rng(0).normal(size=(25, 3)).astype(np.float32)
    for i in range(200):
        np.save(big / f"sub-{i:03d}_bold.npy", x)
    sc = load_scans(big)
    assert len(sc) == 200 and sc.n_subjects == 200 and sc.subjects[7] == "007"
    assert "loading scans: 200/200 (100%" in capsys.readouterr().err

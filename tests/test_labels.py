"""Labels, tasks and subject splits (data/labels.py, SPEC §9): task types, missing labels, scans
collapsed to subjects, labels matched by subject id, deterministic stratified splits, and every
user error's message.

    python -m pytest -q tests/test_labels.py
"""
import numpy as np
import pytest

from data import labels


def _task(y, subjects=None, **kw):
    subjects = subjects if subjects is not None else [f"s{i}" for i in range(len(y))]
    return labels.make_task("t", [None if v is None else str(v) for v in y], subjects, **kw)


# ---------------------------------------------------------------- labels -> task

def test_task_type_auto_and_overrides():
    assert _task([0, 1, 2] * 5).kind == "classification"
    assert _task(["M", "F"] * 5).classes == ["F", "M"]
    assert _task(["1", "1.0", "0", "2"] * 3).classes == ["0", "1", "2"]
    reg = _task(np.linspace(20, 80, 30))
    assert reg.kind == "regression" and reg.classes is None
    assert _task(list(range(30))).kind == "regression"                     # > 10 integers
    assert _task([0, 1, 2] * 5, task_type="regression").kind == "regression"
    binned = _task(np.arange(30.0), bins=3)
    assert binned.kind == "classification" and np.bincount(binned.y).tolist() == [10, 10, 10]


def test_missing_labels_dropped_and_counted():
    t = _task([0, 1, None, 1, 0, None])
    assert t.n_missing == 2 and t.scans.tolist() == [0, 1, 3, 4]


def test_scans_collapse_to_subjects():
    t = _task([0, 0, 1, 1], subjects=["a", "a", "b", "b"])
    assert t.subjects == ["a", "b"] and t.unit.tolist() == [0, 0, 1, 1] and t.y.tolist() == [0, 1]
    with pytest.raises(ValueError, match="constant within a subject"):
        _task([0, 1], subjects=["a", "a"])


def test_labels_matched_by_subject_id(tmp_path):
    f = tmp_path / "labels.tsv"
    f.write_text("participant_id\tdx\nsub-02\t1\nsub-01\t0\nsub-09\t1\n")
    header, rows = labels.read_labels(f)
    values, subjects, notes = labels.scan_labels(header, rows, "dx", ["01", "02", "02", "03"], True)
    assert values == ["0", "1", "1", None]
    assert any("no row" in n for n in notes) and any("no scan" in n for n in notes)
    # a single array carries no ids: rows are scans, the subject column groups them
    values, subjects, _ = labels.scan_labels(header, rows, "dx", ["0", "1", "2"], False)
    assert values == ["1", "0", "1"] and subjects == ["sub-02", "sub-01", "sub-09"]


def test_label_errors(tmp_path):
    f = tmp_path / "labels.csv"
    f.write_text("subject,sz,age\na,1,30\nb,0,40\n")
    header, rows = labels.read_labels(f)
    with pytest.raises(ValueError, match="unknown task 'mdd'.*available: sz, age"):
        labels.scan_labels(header, rows, "mdd", ["a", "b"], True)
    with pytest.raises(ValueError, match="2 rows but there are 3 scans"):
        labels.scan_labels(header, rows, "sz", ["x", "y", "z"], False)
    with pytest.raises(ValueError, match="no subject in the labels matches"):
        labels.scan_labels(header, rows, "sz", ["x", "y"], True)
    with pytest.raises(ValueError, match="labels file not found"):
        labels.read_labels(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="at least 3 per class"):
        labels.check_splittable(_task([0] * 10 + [1] * 2), (4, 1, 8))
    with pytest.raises(ValueError, match="at least 2 subjects in each"):
        labels.check_splittable(_task(np.linspace(0, 1, 5) + 0.01), (4, 1, 8))
    with pytest.raises(ValueError, match="distinct non-numeric"):
        _task([f"site{i}" for i in range(20)])


def test_subject_column_is_no_task(tmp_path):
    header, rows = ["participant_id", "age"], [["1", "30"], ["2", "40"]]
    with pytest.raises(ValueError, match="'participant_id' is the subject column: .* not a label to probe; "
                                         "available: age"):
        labels.scan_labels(header, rows, "participant_id", ["1", "2"], True)


def test_command_line(tmp_path, capsys):
    f = tmp_path / "labels.csv"
    f.write_text("subject,dx\n" + "a,1\nb,0\nb,0\nc,NA\n")
    labels.main([str(f), "dx"])
    out = capsys.readouterr().out
    assert "dx: classification, 2 subjects, 3 rows used, 1 missing; classes 0, 1" in out and "3 scans from 2" in out
    with pytest.raises(SystemExit) as e:
        labels.main([str(f), "subject"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("labels.py: error: 'subject' is the subject column")


@pytest.mark.parametrize("text, message", [
    ("subject,dx\n", "needs a header row and at least one data row"),
    ("subject,dx,age\na,1,30\nb,0\n", "row 3 has 2 fields, the header has 3"),
])
def test_labels_file_errors(tmp_path, text, message):
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        labels.read_labels(tmp_path / "labels.csv")


def test_subject_with_two_values(tmp_path):
    header, rows = ["subject", "dx"], [["sub-a", "1"], ["a", "0"], ["b", "1"]]
    with pytest.raises(ValueError, match=r"subject a appears twice in the labels with different 'dx' values "
                                         r"\(1, 0\); give one row per subject"):
        labels.scan_labels(header, rows, "dx", ["a", "b"], True)


@pytest.mark.parametrize("values, kw, message", [
    ([None, None], {}, "task 't': every scan's label is missing"),
    ([1.5, 2.5, 3.5], {"bins": 2, "task_type": "regression"}, "--bins turns the target into classes; it cannot"),
    (["M", "F"], {"bins": 2}, "--bins needs a numeric target, but task 't' has non-numeric values"),
    (["M", "F"], {"task_type": "regression"}, "task 't' has non-numeric values; a regression target must be numbers"),
    ([5.0] * 10, {"bins": 3}, "task 't' cannot be binned into 3 quantile classes: too few distinct values"),
])
def test_make_task_errors(values, kw, message):
    with pytest.raises(ValueError, match=message):
        _task(values, **kw)


# ---------------------------------------------------------------- splits

def test_split_deterministic_stratified_disjoint():
    t = _task([0] * 60 + [1] * 30 + [2] * 13)
    a, b = labels.split_subjects(t, seed=3), labels.split_subjects(t, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, labels.split_subjects(t, seed=4)))
    train, val, test = a
    assert len(np.concatenate(a)) == len(np.unique(np.concatenate(a))) == 103
    for c, n in enumerate([60, 30, 13]):                                   # 4:1:8 inside every class
        k = [int((t.y[s] == c).sum()) for s in (train, val, test)]
        assert abs(k[0] - n * 4 / 13) < 1 and abs(k[1] - n / 13) < 1 and sum(k) == n
    assert len(labels.split_subjects(_task([0, 1] * 3), seed=0)[1]) == 2     # smallest class still in val

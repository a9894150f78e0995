"""training/checkpoint.py: teacher.pt / state.pt round trips, weights_only loading, atomic writes, clear errors."""
import os

import numpy as np
import pytest
import torch

from training import checkpoint
from data import networks
from encoder import Encoder, EncoderConfig


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return Encoder(EncoderConfig(dim=32, depth=1, heads=2, proj_hidden=64), networks.default_network_map()).eval()


@pytest.fixture
def teacher_file(tmp_path, encoder):
    path = tmp_path / "teacher.pt"
    checkpoint.save_teacher(path, encoder, networks.default_network_map(), 7, {"lr": 7e-4, "data": None})
    return path


def test_teacher_round_trip(teacher_file, encoder):
    raw = torch.load(teacher_file, weights_only=True)  # plain data only
    assert raw["format"] == "brain-semantoks/teacher" and raw["version"] == 1
    assert raw["network_map"].dtype == torch.int64 and raw["network_map"].shape == (457,)
    assert raw["network_names"][0] == "Vis" and len(raw["network_names"]) == 9
    enc, meta = checkpoint.load_teacher(teacher_file)
    assert meta["step"] == 7 and meta["train_config"]["lr"] == 7e-4 and "state_dict" not in meta
    assert meta["encoder_config"]["dim"] == 32
    x = torch.randn(2, 457, 100)
    with torch.no_grad():
        assert torch.equal(enc.features(x), encoder.features(x))
    assert not enc.training
    assert not any(f.startswith(".teacher.pt.") for f in os.listdir(teacher_file.parent))  # no temp files left


def test_state_round_trip(tmp_path):
    p = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(p.parameters())
    p(torch.randn(4, 3)).sum().backward()
    opt.step()
    checkpoint.save_state(tmp_path / "state.pt", step=3, model=p.state_dict(), optimizer=opt.state_dict(),
                          log=[{"step": 1, "cls": -1.0}], sampler={"epoch": 0, "pos": 8})
    st = checkpoint.load_state(tmp_path / "state.pt")
    assert st["step"] == 3 and st["log"][0]["cls"] == -1.0 and st["sampler"]["pos"] == 8
    opt2 = torch.optim.AdamW(p.parameters())
    opt2.load_state_dict(st["optimizer"])
    assert "format" not in st


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="checkpoint not found"):
        checkpoint.load_teacher(tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="is a folder"):
        checkpoint.load_teacher(tmp_path)


@pytest.mark.parametrize("cut", [0, 100, -200])
def test_truncated_file(teacher_file, cut):
    raw = teacher_file.read_bytes()
    teacher_file.write_bytes(raw[:cut] if cut >= 0 else raw[:len(raw) + cut])
    with pytest.raises(ValueError, match="empty|corrupt or truncated"):
        checkpoint.load_teacher(teacher_file)


def test_garbage_file(tmp_path):
    # random bytes can trip the unpickler anywhere (IndexError, UnicodeDecodeError, ...): many blobs
    rng = np.random.default_rng(0)
    path = tmp_path / "x.pt"
    for _ in range(200):
        path.write_bytes(rng.integers(0, 256, int(rng.integers(1, 4096)), dtype=np.uint8).tobytes())
        with pytest.raises(ValueError, match="corrupt or truncated|not a Brain-Semantoks|needs pickle"):
            checkpoint.load_teacher(path)


def test_not_our_format(tmp_path, teacher_file):
    other = tmp_path / "other.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, other)
    with pytest.raises(ValueError, match="not a Brain-Semantoks teacher checkpoint"):
        checkpoint.load_teacher(other)
    torch.save(torch.nn.Linear(2, 2), other)  # a pickled module: refused by weights_only
    with pytest.raises(ValueError, match="objects other than plain tensors"):
        checkpoint.load_teacher(other)
    state = tmp_path / "state.pt"
    checkpoint.save_state(state, step=1)
    with pytest.raises(ValueError, match="training state.*pass teacher.pt"):
        checkpoint.load_teacher(state)
    with pytest.raises(ValueError, match="teacher checkpoint.*not a resumable"):
        checkpoint.load_state(teacher_file)


def test_version_and_architecture_mismatch(teacher_file):
    raw = torch.load(teacher_file, weights_only=True)
    torch.save({**raw, "version": 99}, teacher_file)
    with pytest.raises(ValueError, match="version 99"):
        checkpoint.load_teacher(teacher_file)
    raw["encoder_config"]["depth"] = 2
    torch.save(raw, teacher_file)
    with pytest.raises(ValueError, match="does not match this code's encoder"):
        checkpoint.load_teacher(teacher_file)


def test_failed_write_keeps_previous_file(teacher_file, encoder, monkeypatch):
    before = teacher_file.read_bytes()

    def crash(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_teacher(teacher_file, encoder, networks.default_network_map(), 8, {})
    assert teacher_file.read_bytes() == before
    assert os.listdir(teacher_file.parent) == ["teacher.pt"]


def test_init_from_names_a_different_network_map():
    cfg, m = EncoderConfig(), np.array([0, 0, 1, 1, 2])
    checkpoint.check_architecture(cfg, cfg, "x.pt", m, m.copy())   # same map: fine
    with pytest.raises(ValueError, match=r"x.pt: the checkpoint was trained with another ROI -> network map "
                                         r"\(5 ROIs, 2 networks\); pass that map with --networks"):
        checkpoint.check_architecture(cfg, cfg, "x.pt", m, np.array([0, 0, 1, 1, 1]))

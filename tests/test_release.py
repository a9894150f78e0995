"""--ckpt hf:OWNER/NAME[/FILE][@REV] (training/release.py) through a huggingface_hub cache built here,
offline (never the network): the release's .pth is found, its config file read, a revision pinned,
and a clear message when it is not cached.

    python -m pytest -q tests/test_release.py
"""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import embed
from training import release
from training.checkpoint import load_init, load_teacher

FIXTURE = Path(__file__).parent / "fixtures" / "authors" / "checkpoint_epoch_1.pth"
MAIN, OLD = "a" * 40, "b" * 40


def _snapshot(cache, commit, files, repo="SamGijsen/Brain-Semantoks", ref="main"):
    """A snapshot in huggingface_hub's cache layout: models--OWNER--NAME/{refs/REF, snapshots/COMMIT/...}."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    if ref:
        (root / "refs" / ref).write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for name, write in files.items():
        write(snap / name)
    return snap


@pytest.fixture
def hub(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    release.resolve.cache_clear()
    bare = torch.load(FIXTURE, weights_only=True)["model_state_dict"]            # no config of its own
    _snapshot(cache, MAIN, {"ukb_model.pth": lambda p: torch.save(bare, p),
                            "config.yaml": lambda p: p.write_text("model:\n  heads: 2\ndata:\n  patch_size: 20\n")})
    _snapshot(cache, OLD, {"weights/old.pth": lambda p: (p.parent.mkdir(), shutil.copy(FIXTURE, p))}, ref=None)
    yield cache
    release.resolve.cache_clear()


def test_release_by_name_from_the_cache(hub, tmp_path):
    encoder, meta = load_teacher("hf:SamGijsen/Brain-Semantoks")
    assert encoder.config.heads == 2                                # from config.yaml: no tensor shows it
    ref, _ = load_teacher(FIXTURE)
    pinned, _ = load_teacher(f"hf:SamGijsen/Brain-Semantoks@{OLD}")                # a revision, its own file
    x = torch.randn(2, 457, 100)
    with torch.no_grad():
        assert torch.equal(pinned.features(x), ref.features(x)) and pinned.config.heads == ref.config.heads == 1
    cfg, _, states = load_init("hf:SamGijsen/Brain-Semantoks/ukb_model.pth")    # train.py --init-from
    assert cfg.heads == 2 and states["student"]["head"] is not None
    np_ = tmp_path / "x.npy"
    np.save(np_, np.random.default_rng(0).normal(size=(2, 457, 100)).astype(np.float32))
    res = embed.main(["--ckpt", "hf:SamGijsen/Brain-Semantoks", "--data", str(np_), "--out", str(tmp_path / "e.npy")])
    assert res["features"].shape == (2, 64)


def test_release_errors(hub, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"hf:SamGijsen/Other: HF_HUB_OFFLINE is set and the model is not in the cache"):
        release.resolve("hf:SamGijsen/Other")
    with pytest.raises(ValueError, match="expected hf:OWNER/NAME"):
        release.resolve("hf:SamGijsen")
    _snapshot(hub, "c" * 40, {"a.pth": lambda p: p.write_bytes(b"x"), "b.pth": lambda p: p.write_bytes(b"x")},
              repo="me/two")
    with pytest.raises(ValueError, match=r"hf:me/two: holds several weight files \(a.pth, b.pth\); name one: hf:me/two/a.pth"):
        release.resolve("hf:me/two")
    with pytest.raises(ValueError, match="has no file c.pth"):
        release.resolve("hf:SamGijsen/Brain-Semantoks/c.pth")

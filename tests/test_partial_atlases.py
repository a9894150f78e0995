"""Data holding only some of the release's atlases (data/atlases.py): the absent atlases' networks get
the mask embedding in every patch, so the features equal the full model's with those networks masked
by hand, whatever the absent ROIs held; in embed.py, probe.py and train.py, and the errors.

    python -m pytest -q tests/test_partial_atlases.py
"""
import json

import numpy as np
import pytest
import torch

import embed
import probe
import train
from data.atlases import masked_networks, parse_atlases
from data.load import load_scans
from data.networks import default_network_map
from data.preprocess import probe_crops
from encoder import Encoder, EncoderConfig
from test_h5 import write_authors_h5
from test_probe import _error
from training.checkpoint import load_teacher, save_teacher

CONFIG = EncoderConfig(dim=32, depth=1, heads=1, proj_hidden=64)
FULL = {"schaefer400": 400, "tian3": 50, "buckner7": 7}
LENGTHS = [130, 100, 60, 25, 130, 90]


def _teacher(path, m=None, **train_config):
    m = default_network_map() if m is None else m
    torch.manual_seed(0)
    save_teacher(path, Encoder(CONFIG, m), m, step=1, train_config=train_config)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _teacher(tmp_path_factory.mktemp("run") / "teacher.pt")


def _by_hand(ckpt, full_path, masked):
    """The full model on the full data with `masked` networks masked by hand: (S, 2D) mean over crops."""
    encoder, _ = load_teacher(ckpt)
    crops = probe_crops(load_scans(full_path))                               # (S, 8, C, T')
    with torch.no_grad():
        f = encoder.features(crops.flatten(0, 1), masked)                    # (S·8, 2D)
    return f.reshape(crops.shape[0], 8, -1).mean(1).numpy()


def _embed(ckpt, data, out, *extra):
    return embed.main(["--ckpt", str(ckpt), "--data", str(data), "--out", str(out), "--precision", "fp32", *extra])


def test_h5_with_schaefer_only_equals_masking_by_hand(ckpt, tmp_path, capsys):
    full = write_authors_h5(tmp_path / "full.h5", LENGTHS, seed=1)           # (S, 457, T) float16
    part = tmp_path / "cortex.h5"
    write_authors_h5(part, LENGTHS, {"schaefer400": 400}, seed=1)            # the same cortex, nothing else
    assert np.array_equal(load_scans(part).read([0])[:, :400], full[:1, :400].astype(np.float32), equal_nan=True)
    res = _embed(ckpt, part, tmp_path / "emb.npy")
    assert "masked networks: Subcortical, Cerebellum" in capsys.readouterr().out
    np.testing.assert_allclose(np.load(tmp_path / "emb.npy"), _by_hand(ckpt, tmp_path / "full.h5", [7, 8]),
                               rtol=1e-5, atol=1e-5)
    assert res["data"]["masked_networks"] == ["Subcortical", "Cerebellum"]
    assert json.loads((tmp_path / "emb_config.json").read_text())["atlases"] == ["schaefer400"]
    # without the mask the subcortical and cerebellar values would matter: the comparison has teeth
    unmasked = _by_hand(ckpt, tmp_path / "full.h5", None)
    assert np.abs(unmasked - np.load(tmp_path / "emb.npy")).max() > 1e-3


def test_array_with_atlases_flag_and_absent_values_do_not_matter(ckpt, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 1.0, (4, 457, 120)).astype(np.float32)               # (S, C, T)
    np.save(tmp_path / "full.npy", x)
    y = x.copy()
    y[:, 450:] = rng.normal(0.0, 9.0, (4, 7, 120))                            # other cerebellar values
    np.save(tmp_path / "other.npy", y)
    np.save(tmp_path / "part.npy", x[:, :450])                                # Schaefer + Tian only
    _embed(ckpt, tmp_path / "part.npy", tmp_path / "part_emb.npy", "--atlases", "tian3,schaefer400")
    expected = _by_hand(ckpt, tmp_path / "full.npy", [8])
    np.testing.assert_allclose(np.load(tmp_path / "part_emb.npy"), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_by_hand(ckpt, tmp_path / "other.npy", [8]), expected, rtol=1e-5, atol=1e-5)


def test_probe_on_a_partial_h5_reports_the_masked_networks(ckpt, tmp_path):
    write_authors_h5(tmp_path / "sub.h5", LENGTHS * 4, {"schaefer400": 400, "tian3": 50}, seed=2,
                     ids=[f"s{i}" for i in range(24)])
    rep = probe.main(["--ckpt", str(ckpt), "--data", str(tmp_path / "sub.h5"), "--task", "age", "--bins", "2",
                      "--repeats", "2", "--baselines", "none", "--split", "1:1:1", "--no-cache",
                      "--out", str(tmp_path / "p.json"), "--precision", "fp32"])
    assert rep["config"]["masked_networks"] == ["Cerebellum"] and rep["config"]["atlases"] == ["schaefer400", "tian3"]


def test_errors(ckpt, tmp_path, capsys):
    np.save(tmp_path / "part.npy", np.random.default_rng(0).normal(size=(3, 450, 60)).astype(np.float32))
    err = _error(["--ckpt", str(ckpt), "--data", str(tmp_path / "part.npy"), "--atlases", "schaefer400"],
                 capsys, embed.main)
    assert "the data have 450 ROIs but --atlases schaefer400 holds 400 (schaefer400 400)" in err
    err = _error(["--ckpt", str(ckpt), "--data", str(tmp_path / "part.npy"), "--atlases", "schaefer400,aal"],
                 capsys, embed.main)
    assert "unknown: aal" in err
    # a model that never masked has no trained mask embedding
    no_mask = _teacher(tmp_path / "nomask.pt", mask_prob=0.0)
    err = _error(["--ckpt", str(no_mask), "--data", str(tmp_path / "part.npy"), "--atlases", "schaefer400,tian3",
                  "--out", str(tmp_path / "e.npy")], capsys, embed.main)
    assert "lacks buckner7, whose networks (Cerebellum) would be masked, but the checkpoint has no mask embedding" in err
    # a map where the absent ROIs share a network with present ones
    m = default_network_map().copy()
    m[400:450], m[450:] = 6, 7                                               # Tian ROIs in the default mode network
    with pytest.raises(ValueError, match=r"not whole networks of the model's map: network 6 \(50 of 141 ROIs absent\)"):
        masked_networks(m, np.arange(400, 450))
    assert masked_networks(m, np.arange(450, 457)) == [7]
    assert parse_atlases("buckner7, schaefer400") == ("schaefer400", "buckner7")
    write_authors_h5(tmp_path / "c.h5", LENGTHS, {"schaefer400": 400})
    with pytest.raises(ValueError, match=r"--atlases schaefer400,tian3: .*c.h5 holds schaefer400 \(an .h5 in the "
                                         r"authors' layout says itself which atlases it has; leave --atlases out\)"):
        load_scans(tmp_path / "c.h5", atlases="schaefer400,tian3")


def test_train_init_from_masks_absent_networks_without_loss(ckpt, tmp_path, capsys):
    from conftest import TINY_RUN
    x = np.random.default_rng(0).normal(size=(16, 407, 120)).astype(np.float32)   # Schaefer + Buckner
    np.save(tmp_path / "sb.npy", x)
    run = [a for a in TINY_RUN if a not in ("--heads", "2")] + ["--heads", "1"]
    train.main(["--data", str(tmp_path / "sb.npy"), "--atlases", "schaefer400,buckner7", "--init-from", str(ckpt),
                "--steps", "2", "--mask-prob", "1", "--out", str(tmp_path / "run"), *run])
    out = capsys.readouterr().out
    assert "masked networks (absent atlases; the mask embedding in every patch, no loss): Subcortical" in out
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["atlases"] == "schaefer400,buckner7"


def test_absent_networks_take_no_loss():
    from losses import build_models, compute_losses
    from training.trainer import AbsentNetworks
    m = np.repeat(np.arange(3), 4)                                            # 12 ROIs, 3 networks
    student, teacher = build_models(CONFIG, m, seed=0)
    absent = torch.tensor([False, False, True])
    s, t = (AbsentNetworks(net, absent, student.encoder) for net in (student, teacher))
    x = torch.randn(4, 12, 100)
    y = x.clone()
    y[:, 8:] = torch.randn(4, 4, 100) * 5                                     # other values in the absent network
    mask = torch.zeros(8, 3, 5, dtype=torch.bool)
    mask[:, 0, 1:3] = True                                                    # L_Tok on network 0 only
    assert s(torch.cat([x, x]), mask, True)["z_net"].shape == (8, 2, CONFIG.proj_dim)   # no absent summary
    a, b = (compute_losses(s, t, v[:2], v[2:], mask[:4], 0.5) for v in (x, y))
    for k in ("loss", "cls", "ttr", "tok"):
        assert torch.equal(a[k], b[k]), k
    assert a["tok"] != 0


def test_authors_checkpoint_without_mask_embedding_is_flagged(tmp_path):
    from pathlib import Path
    obj = torch.load(Path(__file__).parent / "fixtures" / "authors" / "checkpoint_epoch_1.pth", weights_only=True)
    assert load_teacher_meta(obj, tmp_path / "with.pth")["mask_embedding"]
    obj["model_state_dict"] = {k: v for k, v in obj["model_state_dict"].items() if "mask_embedding" not in k}
    assert not load_teacher_meta(obj, tmp_path / "without.pth")["mask_embedding"]


def load_teacher_meta(obj, path):
    torch.save(obj, path)
    return load_teacher(path)[1]

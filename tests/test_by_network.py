"""probe.py --by-network (evaluation/by_network.py): each network alone and each network masked, probed on the
same splits, the features cached; on a cohort whose label acts through one network, that network ranks first.
A tiny encoder (D 32, depth 1), 12 ROIs in 3 networks."""
import json

import numpy as np
import pytest
import torch

import probe
from encoder import Encoder, EncoderConfig
from evaluation import by_network, features
from test_probe import NET_MAP, _cohort
from training.checkpoint import save_teacher

CFG = EncoderConfig(dim=32, depth=1, heads=2, crop_len=40, patch_len=20, proj_hidden=32, proj_dim=16)


def _ckpt(folder, network_map=NET_MAP):
    torch.manual_seed(1)
    path = folder / "teacher.pt"
    save_teacher(path, Encoder(CFG, network_map), network_map, step=7, train_config={})
    return path


def test_by_network_masks_each_network_probes_the_same_splits_and_caches(tmp_path, monkeypatch, capsys):
    scans, labels = _cohort(tmp_path)                     # dx: a shared signal in network 0's ROIs only
    seen = []
    extract = features.encoder_features

    def recording(*a, **k):                               # feature_cache passes masked_networks 8th
        seen.append(None if a[7] is None else sorted(a[7]))
        return extract(*a, **k)
    monkeypatch.setattr(features, "encoder_features", recording)
    out = tmp_path / "dx.json"
    args = lambda task, out: ["--ckpt", str(tmp_path / "teacher.pt"), "--data", str(scans), "--labels", str(labels),
                              "--task", task, "--cache-dir", str(tmp_path / "c"), "--repeats", "2", "--baselines",
                              "none", "--max-iter", "100", "--out", str(out), "--by-network"]
    _ckpt(tmp_path)
    rep = probe.main(args("dx", out))
    assert sorted(seen, key=str) == sorted([None, [1, 2], [0, 2], [0, 1], [0], [1], [2]], key=str)
    res = json.loads((tmp_path / "dx_by_network.json").read_text())["tasks"]["dx"]
    assert (tmp_path / "dx_by_network.png").stat().st_size > 0
    assert res["networks"] == ["net0", "net1", "net2"] and res["metric"] == "balanced_accuracy"
    assert res["full"]["mean"] == pytest.approx(rep["methods"]["teacher"]["summary"]["balanced_accuracy"]["mean"])
    assert res["rank_alone"][0] == 1                      # the network the label acts through, alone, is best
    assert res["alone"][0]["mean"] > max(res["alone"][1]["mean"], res["alone"][2]["mean"])
    drops = [w["drop"] for w in res["without"]]
    assert res["rank_without"] == [sorted(drops, reverse=True).index(d) + 1 for d in drops]
    printed = capsys.readouterr().out
    assert "dx: balanced acc (%) by network" in printed and "(all networks)" in printed
    seen.clear()
    probe.main(args("dx", out))                           # the second run reads every feature set from the cache
    assert seen == []
    probe.main(args("all", tmp_path / "all.json"))        # --task all: every label, the same cached features
    tasks = json.loads((tmp_path / "all_by_network.json").read_text())["tasks"]
    assert set(tasks) == {"dx", "age"} and tasks["age"]["metric"] == "r2" and seen == []


def test_label_networks_of_the_synthetic_cohort():
    assert by_network.label_networks("mech_within") == [5, 6]
    assert by_network.label_networks("mech_between") == [3, 5, 6, 7]
    assert by_network.label_networks("mech_timescale") == [0, 6]
    assert by_network.label_networks("mech_global") == [] and by_network.label_networks("dx") == []
    assert by_network._ranks([0.5, 0.7, 0.7, 0.1]) == [3, 1, 1, 4]


def test_by_network_on_a_one_network_model_is_a_clear_error(tmp_path, capsys):
    scans, labels = _cohort(tmp_path)
    ckpt = _ckpt(tmp_path, np.zeros(12, dtype=np.int64))
    with pytest.raises(SystemExit):
        probe.main(["--ckpt", str(ckpt), "--data", str(scans), "--labels", str(labels), "--task", "dx",
                    "--repeats", "1", "--baselines", "none", "--no-cache", "--by-network"])
    assert "--by-network needs a model with at least two networks (this one has one)" in capsys.readouterr().err

"""The authors' checkpoints and training run (tests/fixtures/authors/, made by their public code in
float64; its README says what every file and key is): their checkpoints load wherever ours do,
our features equal theirs, and two optimizer steps of our Trainer equal two of their loop."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training import checkpoint
from data import networks
from losses import build_models
from training.trainer import param_groups
from data import synthetic
import train
from training import trainer
from encoder import Encoder
from test_train import run_main

FIXTURES = Path(__file__).parent / "fixtures" / "authors"
REPO = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def theirs():
    return torch.load(FIXTURES / "checkpoint_epoch_1.pth", weights_only=True)


@pytest.fixture(scope="module")
def ref():
    return torch.load(FIXTURES / "reference.pt", weights_only=True)


def check_features(encoder, ref, role, tol=1e-10):
    x = ref["x"].to(next(encoder.parameters()).dtype)
    with torch.no_grad():
        cls, tokens = encoder(x)
        feats = encoder.features(x)
    for got, key in ((cls, "cls"), (tokens, "tokens"), (feats, "features")):
        want = ref[f"{role}_{key}"].to(got.dtype)
        assert (got - want).abs().max().item() <= tol * max(1.0, want.abs().max().item()), f"{role} {key}"


def test_teacher_and_student_features_equal_theirs(theirs, ref, tmp_path):
    encoder, meta = checkpoint.load_teacher(FIXTURES / "checkpoint_epoch_1.pth", dtype=torch.float64)
    assert meta["format"] == "authors" and meta["encoder_config"]["dim"] == 32
    assert (meta["encoder_config"]["depth"], meta["encoder_config"]["heads"], meta["encoder_config"]["proj_hidden"]) == (2, 1, 256)
    assert meta["network_names"][0] == "Vis" and len(meta["network_map"]) == 457
    check_features(encoder, ref, "teacher")
    cfg, m, states = checkpoint.import_authors(theirs)
    student = Encoder(cfg, m).double()
    student.load_state_dict(states["student"]["encoder"])
    check_features(student.eval(), ref, "student")


@pytest.mark.parametrize("wrap", ["bare", "ddp", "bare+ddp"])
def test_bare_and_ddp_state_dicts(theirs, ref, tmp_path, wrap):
    sd = theirs["model_state_dict"]
    if "ddp" in wrap:
        sd = {"module." + k: v for k, v in sd.items()}
    obj = sd if wrap.startswith("bare") else {**theirs, "model_state_dict": sd}
    torch.save(obj, tmp_path / "x.pth")
    encoder, _ = checkpoint.load_teacher(tmp_path / "x.pth", dtype=torch.float64)
    check_features(encoder, ref, "teacher")


def test_converter_writes_our_format(ref, tmp_path):
    out = tmp_path / "teacher.pt"
    r = subprocess.run([sys.executable, "-m", "training.checkpoint", "convert", str(FIXTURES / "checkpoint_epoch_1.pth"),
                        "--out", str(out)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "D 32, depth 2" in r.stdout
    raw = torch.load(out, weights_only=True)
    assert raw["format"] == "brain-semantoks/teacher" and raw["state_dict"]["cls_token"].dtype == torch.float64
    encoder, meta = checkpoint.load_teacher(out, dtype=torch.float64)
    check_features(encoder, ref, "teacher")
    encoder32, _ = checkpoint.load_teacher(out)          # the everyday float32 model: float32 rounding only
    check_features(encoder32, ref, "teacher", tol=1e-5)


def test_converter_reads_the_checkpoint_once(ref, tmp_path, monkeypatch):
    reads, real = [], checkpoint._read
    monkeypatch.setattr(checkpoint, "_read", lambda *a: reads.append(a[0]) or real(*a))
    encoder, meta = checkpoint.convert(FIXTURES / "checkpoint_epoch_1.pth", tmp_path / "teacher.pt")
    assert len(reads) == 1 and meta["network_names"][0] == "Vis"
    check_features(encoder, ref, "teacher")                 # float64, as the source


def test_two_training_steps_equal_theirs(theirs, ref):
    cfg_e, m, states = checkpoint.import_authors(theirs)
    steps = ref["steps"]
    cfg = train.resolve_config({"batch_size": 3, "steps": 760, "precision": "fp32"})
    tr = trainer.Trainer(cfg, cfg_e, m, None, 760, torch.device("cpu"))
    tr.student.double()
    tr.teacher.double()
    tr.init_from(states)
    for i in range(2):
        mask = steps["mask"][i] if steps["mask_used"][i] else None
        r = tr.update(steps["x1"][i].double(), steps["x2"][i].double(), mask, lr=steps["lr"][i].item(),
                      wd=steps["wd"][i].item(), ema=steps["momentum"][i].item(), ttr_w=steps["ttr_weight"][i].item())
        # their network_loss and mask_loss are logged already weighted (see the fixture's README)
        got = {"loss": r["loss"], "cls_loss": r["cls"], "network_loss": steps["ttr_weight"][i] * r["ttr"],
               "mask_loss": 0.5 * r["tok"]}
        for k, v in got.items():
            assert abs(v.item() - steps[k][i].item()) <= 1e-9, f"step {steps['s'][i].item()} {k}"
    _, _, after = checkpoint.import_authors(torch.load(FIXTURES / "checkpoint_after_steps.pth", weights_only=True))
    for role, net in (("student", tr.student), ("teacher", tr.teacher)):
        for part in ("encoder", "head"):
            ours = getattr(net, part).state_dict()
            for k, v in after[role][part].items():
                assert (ours[k] - v).abs().max().item() <= 1e-9, f"{role} {part} {k}"


def test_every_parameter_is_weight_decayed_by_default():
    tiny = train.encoder_config(train.resolve_config({"preset": "demo", "dim": 32, "depth": 1, "heads": 2}))
    net = build_models(tiny, networks.default_network_map(), 0)[0]
    groups = param_groups(net)
    n_params = len(list(net.parameters()))
    assert len(groups[0]["params"]) == n_params and groups[1]["params"] == []
    dino = param_groups(net, "dino")
    names = {id(p): n for n, p in net.named_parameters()}
    plain = {names[id(p)] for p in dino[1]["params"]}
    decayed = {names[id(p)] for p in dino[0]["params"]}
    # the old bug: "token" matched "tokenizer" and exempted the whole tokenizer
    assert {"encoder.tokenizer.dense_weight", "encoder.tokenizer.lin_weight", "encoder.tokenizer.sg_kernel"} <= decayed
    assert {"encoder.cls_token", "encoder.mask_token", "encoder.network_embed", "encoder.tokenizer.norm_weight",
            "encoder.tokenizer.dense_bias", "head.fc1.bias"} <= plain
    with pytest.raises(ValueError, match="unknown weight-decay policy 'none'"):
        param_groups(net, "none")


# ----------------------------------------------------------------------------- bad files, clear errors

def test_file_that_needs_pickle(tmp_path):
    torch.save({"model_state_dict": {}, "args": argparse_namespace()}, tmp_path / "x.pth")
    with pytest.raises(ValueError, match="needs pickle.*never.*weights.pth"):
        checkpoint.load_teacher(tmp_path / "x.pth")


def argparse_namespace():
    import argparse
    return argparse.Namespace(lr=1e-3)


def test_missing_key_and_wrong_shape(theirs, tmp_path):
    sd = dict(theirs["model_state_dict"])
    key = "teacher_encoder.inter_network_transformer.transformer_blocks.1.attn.proj.weight"
    del sd[key]
    torch.save(sd, tmp_path / "x.pth")
    with pytest.raises(ValueError, match=rf"lacks tensor '{key}' \(expected shape \(32, 32\)"):
        checkpoint.load_teacher(tmp_path / "x.pth")
    sd = dict(theirs["model_state_dict"])
    key = "teacher_encoder.network_tokenizers.schaefer400.3.branches.1.projection.weight"
    sd[key] = torch.zeros(16, 40)
    torch.save(sd, tmp_path / "x.pth")
    with pytest.raises(ValueError, match=rf"'{key}' has shape \(16, 40\), expected \(16, 47\).*network 3: 47 ROIs"):
        checkpoint.load_teacher(tmp_path / "x.pth")


def test_network_map_that_contradicts_the_checkpoint(tmp_path):
    m = networks.default_network_map().copy()
    m[0] = 1                                          # one ROI moved from Vis to SomMot: R_0 61 -> 60
    with pytest.raises(ValueError, match=r"has shape \(16, 61, 3\), expected \(16, 60, 3\).*network 0: 60 ROIs"):
        checkpoint.load_teacher(FIXTURES / "checkpoint_epoch_1.pth", network_map=m)
    with pytest.raises(ValueError, match="9 network tokenizers.*map has 3 networks"):
        checkpoint.load_teacher(FIXTURES / "checkpoint_epoch_1.pth", network_map=np.arange(457) % 3)


def test_converter_refuses_our_own_files(tmp_path, capsys):
    enc = Encoder(train.encoder_config(train.resolve_config({"preset": "demo", "dim": 32, "depth": 1, "heads": 2})),
                  networks.default_network_map())
    checkpoint.save_teacher(tmp_path / "t.pt", enc, networks.default_network_map(), 1, {})
    with pytest.raises(SystemExit) as e:
        checkpoint.main(["convert", str(tmp_path / "t.pt"), "--out", str(tmp_path / "o.pt")])
    assert e.value.code == 2 and "needs no conversion" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o.pt")


# ----------------------------------------------------------------------------- continue pretraining from their model

@pytest.fixture(scope="module")
def scans_457(tmp_path_factory):
    d = tmp_path_factory.mktemp("cohort457")
    synthetic.make_synthetic_cohort(d, n_pretrain_subjects=6, scans_per_subject=1, n_probe=4, length_range=(100, 120))
    return d / "pretrain.npy"


FIXTURE_ARCH = ["--preset", "demo", "--dim", "32", "--depth", "2", "--heads", "1", "--proj-hidden", "256",
                "--batch-size", "4", "--no-kernels", "--eval-scans", "0", "--precision", "fp32", "--log-every", "1"]


def test_init_from_their_checkpoint(theirs, scans_457, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_main(["--data", scans_457, *FIXTURE_ARCH, "--steps", "1", "--lr", "0",
                                   "--init-from", FIXTURES / "checkpoint_epoch_1.pth", "--out", out], capsys)
    assert code == 0, err
    assert "initialised student and teacher from" in stdout and "encoders and projection head" in stdout
    state = checkpoint.load_state(out / "state.pt")
    _, _, want = checkpoint.import_authors(theirs)
    student = state["student"]
    for k, v in want["student"]["encoder"].items():   # lr 0: the student is still their student (float32)
        torch.testing.assert_close(student[f"encoder.{k}"], v.float(), rtol=0, atol=0, msg=k)
    for k, v in want["student"]["head"].items():
        torch.testing.assert_close(student[f"head.{k}"], v.float(), rtol=0, atol=0, msg=k)
    assert state["optimizer"]["state"]                 # a fresh optimizer that has taken its first step


def test_init_from_with_another_architecture(scans_457, tmp_path, capsys):
    code, _, err = run_main(["--data", scans_457, "--preset", "demo", "--steps", "1", "--batch-size", "4",
                              "--eval-scans", "0", "--init-from", FIXTURES / "checkpoint_epoch_1.pth",
                              "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert "does not match this run's architecture" in err and "dim 32 in the checkpoint, 192 in this run" in err
    assert "depth 2 in the checkpoint, 4 in this run" in err and "proj_hidden 256 in the checkpoint, 1024" in err


TOKENIZER_0 = "teacher_encoder.network_tokenizers.schaefer400.0.branches.1.slconv."
TRANSFORMER = "teacher_encoder.inter_network_transformer."


@pytest.mark.parametrize("mutate, message", [
    (lambda sd: [sd.pop(k) for k in list(sd) if ".network_tokenizers." in k],
     "has no teacher_encoder.network_tokenizers.* tensors"),
    (lambda sd: sd.update({TRANSFORMER + "transformer_blocks.0.mlp.0.weight": torch.zeros(100, 32)}),
     r"unexpected layout \(MLP width 100 for D 32, 2 blocks, 3 SG scales\)"),
    (lambda sd: sd.update({TOKENIZER_0 + "kernel_norm_initialized": torch.tensor(False)}),
     "kernel_norm was never measured .*not a trained model"),
    (lambda sd: sd.update({TOKENIZER_0 + "multiplier": torch.full((1, 61, 1), 3.0)}),
     "multiplier is not 2.0 everywhere; only the paper's SG decay"),
    (lambda sd: sd.update({TRANSFORMER + "temporal_pos_embedding": sd[TRANSFORMER + "temporal_pos_embedding"] + 0.01}),
     "temporal_pos_embedding is not the fixed sin-cos embedding"),
])
def test_authors_layout_errors(theirs, mutate, message):
    sd = dict(theirs["model_state_dict"])
    mutate(sd)
    with pytest.raises(ValueError, match=rf"x.pth: .*{message}"):
        checkpoint.import_authors(sd, path="x.pth")

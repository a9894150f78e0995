"""Checkpoints: the one place they are written and read.

Two files per run (SPEC §6: after training the student is discarded, the teacher encoder is the model):

- `teacher.pt` — the model. A plain dict that `torch.load(..., weights_only=True)` accepts:
      {"format": "brain-semantoks/teacher", "version": 1,
       "encoder_config": asdict(EncoderConfig), "network_map": int64 tensor (C,),
       "network_names": [str] * N, "state_dict": teacher encoder tensors, "step": int,
       "train_config": dict of plain types}
- `state.pt` — everything `train.py --resume` needs to continue exactly where it stopped
  (student, teacher, optimizer, sampler counters, step, log; every random draw is re-seeded from
  (seed, step), so no RNG state is needed); same container format
  {"format": "brain-semantoks/state", "version": 1, ...}.

`--ckpt hf:OWNER/NAME[/FILE][@REV]` (the release by name) is fetched through huggingface_hub's cache
(release.py) wherever a checkpoint is read.

Checkpoints of the authors' code (their `main.py` dict or a bare `model_state_dict`, with or
without DDP's "module." prefix, e.g. their released UK Biobank model) are read wherever ours are:
`load_teacher` (probe.py, embed.py) and `load_init` (train.py --init-from). Their sizes are read
from the tensor shapes; `import_authors` maps their per-network tensors to our layout.

Writes are atomic (machine/fileio.atomic_write: a temporary file in the same folder, fsync, os.replace),
so a crash or a kill mid-write leaves the previous checkpoint intact. Every read is
torch.load(weights_only=True) and turns every failure into a ValueError that says what is wrong
with the file.

    from training.checkpoint import load_teacher
    encoder, meta = load_teacher("runs/demo/teacher.pt")                 # ours, or the authors' .pth
    python -m training.checkpoint convert THEIRS.pth --out teacher.pt             # the authors' .pth -> ours, once
"""
import os
import pickle
import warnings
from dataclasses import asdict

import numpy as np
import torch

from data.networks import default_network_map, load_network_map, network_names, validate_network_map
from encoder import Encoder, EncoderConfig, sincos_embedding
from machine.cli import cli
from machine.fileio import atomic_write
from training import release

TEACHER_FORMAT = "brain-semantoks/teacher"
STATE_FORMAT = "brain-semantoks/state"
VERSION = 1


def _with_config(obj, config):
    """An authors' checkpoint without a config of its own gets the release's config file (heads, patch)."""
    if config is None or not isinstance(obj, dict) or "format" in obj or isinstance(obj.get("config"), dict):
        return obj
    return {**obj, "config": config} if "model_state_dict" in obj else {"model_state_dict": obj, "config": config}


def _read(path, map_location):
    """torch.load(weights_only=True) with every failure turned into a ValueError about the file; an
    hf: name is fetched first (release.py), its config file merged in."""
    if release.is_release(path):
        local, config = release.resolve(path)
        return _with_config(_read(local, map_location), config)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"checkpoint path {path} is a folder; pass the .pt file inside it")
    if os.path.getsize(path) == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes): the file is truncated")
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol chatter on garbage; our error says it better
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"checkpoint {path} cannot be read safely: it needs pickle (it holds objects other than plain tensors and values: "
            f"{str(e).splitlines()[0]}). Loading it would run code from the file, which this project never "
            f"does. If you trust the file, keep only its weights once: torch.save(torch.load(f, "
            f"weights_only=False)['model_state_dict'], 'weights.pth'), and pass weights.pth") from None
    except Exception as e:  # noqa: BLE001 -- arbitrary bytes can fail anywhere in the unpickler
        raise ValueError(f"could not read checkpoint {path}: the file is corrupt or truncated "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def _check_format(obj, path, expected_format):
    fmt = obj.get("format") if isinstance(obj, dict) else None
    if fmt != expected_format:
        hint = ""
        if fmt == STATE_FORMAT:
            hint = "; this is a training state (state.pt) — pass teacher.pt from the same folder"
        elif fmt == TEACHER_FORMAT:
            hint = "; this is a teacher checkpoint (teacher.pt), not a resumable training state"
        raise ValueError(f"{path} is not a Brain-Semantoks {expected_format.split('/')[1]} checkpoint "
                         f"(format {fmt!r}, expected {expected_format!r}){hint}")
    if obj.get("version") != VERSION:
        raise ValueError(f"checkpoint {path} has version {obj.get('version')!r}; this code reads version {VERSION}")
    return obj


def _load(path, expected_format, map_location):
    return _check_format(_read(path, map_location), os.fspath(path), expected_format)


def save_teacher(path, encoder, network_map, step, train_config):
    """Write the teacher encoder (the pretrained model) atomically. `train_config` must be plain types."""
    m = torch.as_tensor(network_map, dtype=torch.int64).cpu()
    with atomic_write(path) as f:
        torch.save({
            "format": TEACHER_FORMAT,
            "version": VERSION,
            "encoder_config": asdict(encoder.config),
            "network_map": m,
            "network_names": list(network_names(m.numpy())),
            "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
            "step": int(step),
            "train_config": dict(train_config),
        }, f)


def load_teacher(path, map_location="cpu", network_map=None, dtype=None):
    """Read a teacher -> (Encoder in eval mode, meta dict without the weights).

    `path`: our teacher.pt, or a checkpoint in the authors' format (their main.py dict or a bare
    model_state_dict, with or without DDP's "module." prefix; its teacher encoder is read).
    `network_map`: ROI -> network ids for an authors' checkpoint (default: the 457-ROI layout of
    SPEC §2); ours carry their own map and refuse a different one. `dtype`: e.g. torch.float64 to
    keep a float64 checkpoint exact (default float32)."""
    path = os.fspath(path)
    return _teacher_from(_read(path, map_location), path, map_location, network_map, dtype)


def _teacher_from(obj, path, map_location="cpu", network_map=None, dtype=None):
    """load_teacher on a checkpoint already read (convert reads it first to find its dtype)."""
    if _authors_state_dict(obj) is not None:
        config, m, states = import_authors(obj, network_map, path)
        state, meta = states["teacher"]["encoder"], {
            "format": "authors", "encoder_config": asdict(config), "network_map": torch.from_numpy(m),
            "network_names": network_names(m), "step": obj.get("epoch") if "model_state_dict" in obj else None,
            "train_config": {"imported_from": os.path.abspath(path)},
            "mask_embedding": "teacher_encoder.inter_network_transformer.mask_embedding" in _authors_state_dict(obj)}
    else:
        obj = _check_format(obj, path, TEACHER_FORMAT)
        config, m, state = _our_config(obj, path), obj["network_map"].numpy(), obj["state_dict"]
        if network_map is not None and not np.array_equal(np.asarray(network_map), m):
            raise ValueError(f"{path} carries the network map it was trained with; a different --networks "
                             f"cannot apply to it (leave --networks out)")
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
        # a run that never masked (--mask-prob 0) leaves the mask embedding at its random start
        meta["mask_embedding"] = (obj.get("train_config") or {}).get("mask_prob", 1) != 0
    try:
        encoder = Encoder(config, m)
        if dtype is not None:
            encoder.to(dtype)
        encoder.load_state_dict(state)
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        raise ValueError(f"checkpoint {path} does not match this code's encoder "
                         f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if isinstance(map_location, (str, torch.device)):
        encoder.to(map_location)
    return encoder.eval(), meta


def _our_config(obj, path):
    try:
        return EncoderConfig(**obj["encoder_config"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"checkpoint {path} does not match this code's encoder "
                         f"({type(e).__name__}: {str(e).splitlines()[0]})") from None


def save_state(path, **state):
    """Write the full resumable training state atomically. Values: tensors, dicts, lists, plain types."""
    with atomic_write(path) as f:
        torch.save({"format": STATE_FORMAT, "version": VERSION, **state}, f)


def load_state(path, map_location="cpu"):
    """Read state.pt written by `save_state` -> dict (without the format fields)."""
    obj = _load(path, STATE_FORMAT, map_location)
    return {k: v for k, v in obj.items() if k not in ("format", "version")}


# ----------------------------------------------------------------------------- the authors' format
# Their main.py saves {"epoch", "model_state_dict", "optimizer_state_dict", ..., "config"}. The model
# holds student_/teacher_encoder (per-network tokenizers for every atlas setting, of which only the
# first atlas's run; an inter-network transformer; a final norm), the projection head
# student_/teacher_predictor and the same head again as *_mask_predictor. Sizes are read from the
# tensor shapes; heads, which no shape shows, from their config (else D/64, as their code sets it).

def _authors_state_dict(obj):
    """The model_state_dict of an authors' checkpoint ("module." removed), or None if obj is not one."""
    if not isinstance(obj, dict) or "format" in obj:
        return None
    sd = obj.get("model_state_dict", obj)
    if not isinstance(sd, dict):
        return None
    sd = {(k[len("module."):] if isinstance(k, str) and k.startswith("module.") else k): v for k, v in sd.items()}
    return sd if any(isinstance(k, str) and k.startswith("teacher_encoder.") for k in sd) else None


def _need(sd, key, shape, why, path):
    """sd[key], checked against the expected shape; a clear error names the key otherwise."""
    if key not in sd:
        raise ValueError(f"{path}: the authors' checkpoint lacks tensor {key!r} (expected shape {shape}; {why})")
    if shape is not None and tuple(sd[key].shape) != tuple(shape):
        raise ValueError(f"{path}: tensor {key!r} has shape {tuple(sd[key].shape)}, expected {tuple(shape)} ({why})")
    return sd[key]


def _authors_config(sd, config, n_networks, path):
    """EncoderConfig and the used tokenizers' atlas name, from the shapes of the teacher's tensors."""
    t, tf = "teacher_encoder.", "teacher_encoder.inter_network_transformer."
    D = _need(sd, tf + "cls_token", None, "the CLS token gives the width D", path).shape[-1]
    P = _need(sd, tf + "temporal_pos_embedding", None, "it gives the patches per crop", path).shape[0]
    depth = len({k.split(".")[3] for k in sd if k.startswith(tf + "transformer_blocks.")})
    atlases = list(dict.fromkeys(k.split(".")[2] for k in sd if k.startswith(t + "network_tokenizers.")))
    if not atlases:
        raise ValueError(f"{path}: the authors' checkpoint has no {t}network_tokenizers.* tensors")
    atlas = atlases[0]  # their forward runs the first atlas's tokenizers; the other copies are never used
    scales = len({k for k in sd if k.startswith(f"{t}network_tokenizers.{atlas}.0.branches.1.slconv.kernel_list.")})
    mlp = _need(sd, tf + "transformer_blocks.0.mlp.0.weight", None, "it gives the MLP width", path).shape[0]
    hidden, p = (_need(sd, f"teacher_predictor.mlp.{i}.weight", None, "the projection head", path).shape[0]
                 for i in (0, 2))
    model, data_cfg = config.get("model", {}), config.get("data", {})
    heads = int(model.get("heads") or 0) or max(1, D // 64)
    patch = int(data_cfg.get("patch_size") or 20)
    n_tok = len({k.split(".")[3] for k in sd if k.startswith(f"{t}network_tokenizers.{atlas}.")})
    if n_tok != n_networks:
        raise ValueError(f"{path}: the checkpoint has {n_tok} network tokenizers ({t}network_tokenizers.{atlas}.*) "
                         f"but the network map has {n_networks} networks; pass --networks with the map the "
                         f"model was trained with")
    if mlp % D or depth == 0 or scales == 0:
        raise ValueError(f"{path}: unexpected layout (MLP width {mlp} for D {D}, {depth} blocks, {scales} SG scales)")
    return EncoderConfig(dim=D, depth=depth, heads=heads, mlp_ratio=mlp // D, patch_len=patch, crop_len=P * patch,
                         n_scales=scales, proj_hidden=hidden, proj_dim=p), atlas


def _authors_tokenizer(sd, pre, cfg, counts, path):
    """Per-network tokenizer tensors -> our flat SemanticTokenizer layout (see tokenizer.py)."""
    half, S = cfg.dim // 2, cfg.n_scales
    parts = {k: [] for k in ("dense_weight", "dense_bias", "sg_skip", "sg_norm", "lin_weight", "lin_bias",
                             "norm_weight", "norm_bias")}
    kernels = [[] for _ in range(S)]
    for n, R in enumerate(counts):
        H, g = -(-half // R), f"{pre}{n}."
        why = (f"network {n}: {R} ROIs in the network map, {H} SG heads, D {cfg.dim}; a map other than the "
               f"model's shows as a wrong ROI count: pass the map it was trained with (--networks)")
        need = lambda key, shape: _need(sd, g + key, shape, why, path)  # noqa: E731
        sg = "branches.1.slconv."
        parts["dense_weight"].append(need("branches.0.weight", (half, R, 3)).permute(1, 2, 0))  # (R, 3, D/2)
        if not bool(need(sg + "kernel_norm_initialized", ())):
            raise ValueError(f"{path}: {g}{sg}kernel_norm was never measured (the model never ran): not a trained model")
        if not torch.all(need(sg + "multiplier", (1, R, 1)) == 2.0):
            raise ValueError(f"{path}: {g}{sg}multiplier is not 2.0 everywhere; only the paper's SG decay is supported")
        parts["dense_bias"].append(need("branches.0.bias", (half,)))
        for i in range(S):  # (H, R, 4) -> rows (roi, head)
            kernels[i].append(need(f"{sg}kernel_list.{i}", (H, R, 4)).transpose(0, 1).reshape(R * H, 4))
        parts["sg_skip"].append(need(sg + "D", (H, R)).T.reshape(-1))                           # (R*H,)
        parts["sg_norm"].append(need(sg + "kernel_norm", (H, R, 1)).transpose(0, 1).reshape(R * H, 1))
        parts["lin_weight"].append(need("branches.1.projection.weight", (half, R * H)).T)       # (R*H, D/2)
        parts["lin_bias"].append(need("branches.1.projection.bias", (half,)))
        parts["norm_weight"].append(need("norm.weight", (cfg.dim,)))
        parts["norm_bias"].append(need("norm.bias", (cfg.dim,)))
    stacked = ("dense_bias", "lin_bias", "norm_weight", "norm_bias")
    out = {f"tokenizer.{k}": (torch.stack(v) if k in stacked else torch.cat(v)) for k, v in parts.items()}
    out["tokenizer.sg_kernel"] = torch.stack([torch.cat(k) for k in kernels])                 # (S, M, 4)
    return out


def _authors_encoder(sd, role, atlas, cfg, m, path):
    """One of their encoders (role "teacher_encoder." or "student_encoder.") -> our Encoder state dict."""
    D, N, P = cfg.dim, int(m.max()) + 1, cfg.crop_len // cfg.patch_len
    tf, why = role + "inter_network_transformer.", f"D {D}, {N} networks, {P} patches"
    need = lambda key, shape, w=why: _need(sd, key, shape, w, path)  # noqa: E731
    time_embed = need(tf + "temporal_pos_embedding", (P, D))
    if not torch.allclose(time_embed.double(), sincos_embedding(P, D).double(), atol=1e-6):
        raise ValueError(f"{path}: {tf}temporal_pos_embedding is not the fixed sin-cos embedding this code uses")
    out = _authors_tokenizer(sd, f"{role}network_tokenizers.{atlas}.", cfg, np.bincount(m, minlength=N).tolist(), path)
    mask_key = tf + "mask_embedding"  # absent when their run never masked: then the usual N(0, 0.02²) start
    out["mask_token"] = need(mask_key, (1, D)) if mask_key in sd else torch.randn(1, D) * 0.02
    out["network_embed"] = need(tf + "network_learnable_pos_embedding.weight", (N, D))
    out["cls_token"] = need(tf + "cls_token", (1, 1, D))
    mlp = cfg.mlp_ratio * D
    ours_theirs = [("norm1.weight", "norm1.weight", (D,)), ("norm1.bias", "norm1.bias", (D,)),
                   ("attn.qkv.weight", "attn.qkv.weight", (3 * D, D)), ("attn.proj.weight", "attn.proj.weight", (D, D)),
                   ("attn.proj.bias", "attn.proj.bias", (D,)), ("ls1", "ls1.gamma", (D,)),
                   ("norm2.weight", "norm2.weight", (D,)), ("norm2.bias", "norm2.bias", (D,)),
                   ("mlp.0.weight", "mlp.0.weight", (mlp, D)), ("mlp.0.bias", "mlp.0.bias", (mlp,)),
                   ("mlp.2.weight", "mlp.3.weight", (D, mlp)), ("mlp.2.bias", "mlp.3.bias", (D,)),
                   ("ls2", "ls2.gamma", (D,))]
    for i in range(cfg.depth):
        for ours, theirs, shape in ours_theirs:
            out[f"blocks.{i}.{ours}"] = need(f"{tf}transformer_blocks.{i}.{theirs}", shape)
    out["norm.weight"], out["norm.bias"] = need(role + "norm.weight", (D,)), need(role + "norm.bias", (D,))
    return out


def _authors_head(sd, role, cfg, path):
    """Their predictor (role "teacher_predictor." or "student_predictor.") -> our ProjectionHead state dict."""
    why = f"projection head D {cfg.dim} -> {cfg.proj_hidden} -> {cfg.proj_dim}"
    shapes = {"fc1.weight": ("mlp.0.weight", (cfg.proj_hidden, cfg.dim)), "fc1.bias": ("mlp.0.bias", (cfg.proj_hidden,)),
              "fc2.weight": ("mlp.2.weight", (cfg.proj_dim, cfg.proj_hidden)), "fc2.bias": ("mlp.2.bias", (cfg.proj_dim,))}
    return {ours: _need(sd, role + theirs, shape, why, path) for ours, (theirs, shape) in shapes.items()}


def import_authors(obj, network_map=None, path="checkpoint"):
    """A checkpoint of the authors' code (already loaded) -> (EncoderConfig, network map,
    {"teacher"|"student": {"encoder": Encoder state dict, "head": ProjectionHead state dict}}).

    `network_map`: ROI -> network ids (default: the 457-ROI layout of SPEC §2). Tensors their
    forward never uses (other atlases' tokenizer copies, the transformer's inner norm, the mask
    predictor, which equals the predictor) are ignored."""
    sd = _authors_state_dict(obj)
    if sd is None:
        raise ValueError(f"{path} is not a checkpoint of the authors' code (no teacher_encoder.* tensors)")
    config = obj.get("config") if "model_state_dict" in obj and isinstance(obj.get("config"), dict) else {}
    m = validate_network_map(default_network_map() if network_map is None else network_map)
    cfg, atlas = _authors_config(sd, config, int(m.max()) + 1, path)
    return cfg, m, {role: {"encoder": _authors_encoder(sd, f"{role}_encoder.", atlas, cfg, m, path),
                           "head": _authors_head(sd, f"{role}_predictor.", cfg, path)}
                    for role in ("teacher", "student")}


# ----------------------------------------------------------------------------- starting a run from a model

ARCHITECTURE = ("dim", "depth", "heads", "mlp_ratio", "patch_len", "crop_len", "n_scales", "proj_hidden", "proj_dim",
                "tokenizer")


def load_init(path, network_map=None):
    """Weights to start a training run from (`train.py --init-from`) -> (EncoderConfig, network map,
    {"student"|"teacher": {"encoder": state dict, "head": state dict or None}}).

    Reads the authors' checkpoints (student, teacher and head), our state.pt (the same) and our
    teacher.pt (both encoders from the teacher; no head is stored there, so it starts fresh)."""
    path = os.fspath(path)
    obj = _read(path, "cpu")
    if _authors_state_dict(obj) is not None:
        return import_authors(obj, network_map, path)
    fmt = obj.get("format") if isinstance(obj, dict) else None
    obj = _check_format(obj, path, STATE_FORMAT if fmt == STATE_FORMAT else TEACHER_FORMAT)
    config, m = _our_config(obj, path), obj["network_map"].numpy()
    if fmt == STATE_FORMAT:
        split = lambda sd, part: {k[len(part) + 1:]: v for k, v in sd.items() if k.startswith(part + ".")}  # noqa: E731
        states = {role: {"encoder": split(obj[role], "encoder"), "head": split(obj[role], "head")}
                  for role in ("student", "teacher")}
    else:
        states = {role: {"encoder": obj["state_dict"], "head": None} for role in ("student", "teacher")}
    return config, m, states


def check_architecture(run_config, ckpt_config, path, run_map, ckpt_map):
    """A clear error naming every architecture field where the run and the checkpoint differ, or
    saying that their ROI -> network maps differ."""
    diff = [f"{k} {getattr(ckpt_config, k)} in the checkpoint, {getattr(run_config, k)} in this run"
            for k in ARCHITECTURE if getattr(ckpt_config, k) != getattr(run_config, k)]
    if diff:
        raise ValueError(f"--init-from {path}: the model does not match this run's architecture ({'; '.join(diff)}). "
                         f"Choose the --preset (or --dim/--depth/--heads/--proj-hidden/--tokenizer) the checkpoint "
                         f"was trained with")
    if not np.array_equal(run_map, ckpt_map):
        raise ValueError(f"--init-from {path}: the checkpoint was trained with another ROI -> network map "
                         f"({len(ckpt_map)} ROIs, {int(ckpt_map.max()) + 1} networks); pass that map with --networks")


# ----------------------------------------------------------------------------- command line

def convert(src, out, network_map=None):
    """An authors' checkpoint -> our teacher.pt (teacher encoder, network map), in the source's dtype."""
    src = os.fspath(src)
    obj = _read(src, "cpu")
    sd = _authors_state_dict(obj)
    if sd is None:
        raise ValueError(f"{src} is not a checkpoint of the authors' code (no teacher_encoder.* tensors); "
                         f"our own teacher.pt needs no conversion")
    dtype = next(v.dtype for k, v in sd.items() if k.startswith("teacher_encoder.") and v.is_floating_point())
    encoder, meta = _teacher_from(obj, src, network_map=network_map, dtype=dtype)
    save_teacher(out, encoder, meta["network_map"], meta["step"] or 0, meta["train_config"])
    return encoder, meta


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description="Checkpoint tools. convert: a checkpoint of the authors' code "
                                            "(their main.py dict or a bare model_state_dict) -> our teacher.pt.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="write our teacher.pt from the authors' checkpoint")
    c.add_argument("src", help="the authors' .pth (e.g. their released UK Biobank model)")
    c.add_argument("--out", required=True, help="where to write teacher.pt")
    c.add_argument("--networks", default="default", help="ROI -> network map the model was trained with: "
                   "default (SPEC §2, 457 ROIs) or a file of one network id per ROI (default: %(default)s)")
    cli(_convert_cli, p.parse_args(argv), "checkpoint.py")


def _convert_cli(args):
    """checkpoint.py convert: write teacher.pt and say what it holds."""
    encoder, meta = convert(args.src, args.out, load_network_map(args.networks))
    cfg = meta["encoder_config"]
    print(f"wrote {args.out}: teacher encoder D {cfg['dim']}, depth {cfg['depth']}, {cfg['heads']} heads, "
          f"{len(meta['network_map'])} ROIs in {int(meta['network_map'].max()) + 1} networks, "
          f"{sum(p.numel() for p in encoder.parameters()) / 1e6:.2f}M parameters")


if __name__ == "__main__":
    main()

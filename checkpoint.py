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

Writes are atomic (temporary file in the same folder, fsync, os.replace), so a crash or a kill
mid-write leaves the previous checkpoint intact. Reads turn every failure into a ValueError that
says what is wrong with the file.

    from checkpoint import load_teacher
    encoder, meta = load_teacher("runs/demo/teacher.pt")
"""
import os
import pickle
import tempfile
import warnings
from dataclasses import asdict

import torch

TEACHER_FORMAT = "brain-semantoks/teacher"
STATE_FORMAT = "brain-semantoks/state"
VERSION = 1


def _atomic_save(obj, path):
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable; not possible on every platform
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _load(path, expected_format, map_location):
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
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"checkpoint {path} is not a Brain-Semantoks checkpoint: it holds objects other "
                         f"than plain tensors and values ({str(e).splitlines()[0]})") from None
    except Exception as e:  # noqa: BLE001 -- arbitrary bytes can fail anywhere in the unpickler

        raise ValueError(f"could not read checkpoint {path}: the file is corrupt or truncated "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
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


def save_teacher(path, encoder, network_map, step, train_config):
    """Write the teacher encoder (the pretrained model) atomically. `train_config` must be plain types."""
    from networks import network_names
    m = torch.as_tensor(network_map, dtype=torch.int64).cpu()
    _atomic_save({
        "format": TEACHER_FORMAT,
        "version": VERSION,
        "encoder_config": asdict(encoder.config),
        "network_map": m,
        "network_names": list(network_names(m.numpy())),
        "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
        "step": int(step),
        "train_config": dict(train_config),
    }, path)


def load_teacher(path, map_location="cpu"):
    """Read teacher.pt -> (Encoder in eval mode, meta dict without the weights)."""
    from encoder import Encoder, EncoderConfig
    obj = _load(path, TEACHER_FORMAT, map_location)
    try:
        config = EncoderConfig(**obj["encoder_config"])
        encoder = Encoder(config, obj["network_map"].numpy())
        encoder.load_state_dict(obj["state_dict"])
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        raise ValueError(f"checkpoint {path} does not match this code's encoder "
                         f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if isinstance(map_location, (str, torch.device)):
        encoder.to(map_location)
    encoder.eval()
    meta = {k: v for k, v in obj.items() if k != "state_dict"}
    return encoder, meta


def save_state(path, **state):
    """Write the full resumable training state atomically. Values: tensors, dicts, lists, plain types."""
    _atomic_save({"format": STATE_FORMAT, "version": VERSION, **state}, path)


def load_state(path, map_location="cpu"):
    """Read state.pt written by `save_state` -> dict (without the format fields)."""
    obj = _load(path, STATE_FORMAT, map_location)
    return {k: v for k, v in obj.items() if k not in ("format", "version")}

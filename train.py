"""Self-distillation pretraining of Brain-Semantoks (SPEC §4, §6, §7, §8).

A student (tokenizer + transformer + projection head) sees two augmented crops of each scan, with
slice masking on half of the batches; an EMA teacher (same architecture, no gradients, never
masked) provides the targets. Loss = L_CLS + w(step)·L_TTR + 0.5·L_Tok, all MCR-style (no softmax,
no centring). After training the student is discarded: <out>/teacher.pt is the model.

    python train.py                                   # demo: built-in synthetic cohort, ~5 min on a laptop CPU
    python train.py --data scans.npy --preset paper   # your data, (S, C, T) at TR 2.0 s
    python train.py --data folder/ --networks auto:9  # per-scan .npy/.csv/.tsv, ROI groups from the data
    torchrun --nproc_per_node 4 train.py --data scans.npy --preset paper
    python train.py --out runs/demo --resume          # continue a stopped run exactly where it stopped
    python train.py --help                            # every option, with its default

Precision and compilation are machine choices (runtime.py): --precision auto runs bf16 autocast on
CUDA and on CPUs with native bf16 (AVX512_BF16/AMX), fp32 elsewhere; --compile auto compiles the
student/teacher forwards on CUDA only. The run prints what they resolved to and why, and stores it
under "runtime" in config.json and the checkpoints.

Files in --out: teacher.pt (the model, checkpoint.py), state.pt (everything needed to resume),
config.json, log.jsonl (one line per log step), curves.png, network_fc.png (--networks auto:K).
"""
import argparse
import copy
import dataclasses
import json
import logging
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import checkpoint
import data
import kernels
import networks
import runtime
import seeding
import synthetic
from encoder import Encoder, EncoderConfig
from losses import ProjectionHead, mcr_loss, network_summaries, token_loss, ttr_loss
from masking import slice_mask
from scans import TrainBatches, group_fc, probe_crops

PRESET_TRAINING = {  # training defaults a preset brings along (anything given on the command line wins)
    "paper": dict(batch_size=512, epochs=100),                  # SPEC §8
    # ~5 min on a 2-core CPU incl. synthetic data. EMA from 0.9, not 0.99: the teacher averages over
    # ~1/(1-m) steps, and at 0.99 that is most of a 120-step run, leaving it near its random init
    # (measured: teacher projection std 0.018 instead of the SPEC's ~0.07, no subject separation gained)
    "demo": dict(batch_size=64, steps=120, log_every=10, ema_momentum=0.9),
}
KEEP_ON_RESUME = ("out", "resume", "log_every", "ckpt_every", "device", "no_kernels",  # may change across a resume
                  "precision", "compile")  # machine choices: a run may move to another machine


@dataclass
class TrainConfig:
    # --- data
    data: Optional[str] = None       # .npy (S,C,T) or folder of per-scan .npy/.csv/.tsv; None -> built-in synthetic cohort
    layout: str = "SCT"              # axis order of a single .npy: SCT (scans, ROIs, time) or STC
    tr: Optional[float] = None       # TR of the data in seconds; scans are resampled to 2.0 s when given
    networks: str = "default"        # ROI -> network map: default (SPEC §2, 457 ROIs) | FILE (.txt/.csv/.npy) | auto:K (cluster group FC)
    # --- model
    preset: Optional[str] = None     # paper | demo (encoder size + training defaults); None -> demo on synthetic data, paper on --data
    dim: Optional[int] = None        # override the preset's width D
    depth: Optional[int] = None      # override the preset's number of transformer blocks
    heads: Optional[int] = None      # override the preset's attention heads
    proj_hidden: Optional[int] = None  # override the projection head's hidden width (1024)
    init: str = "authors"            # initialisation: authors (as the published run) | dino (trunc-normal(0.02) Linears, zero biases)
    # --- optimisation (SPEC §7-8)
    batch_size: Optional[int] = None  # global batch B (split over processes); preset: paper 512, demo 64
    epochs: int = 100                # an epoch visits each subject once; steps/epoch = subjects // B
    steps: Optional[int] = None      # total steps; overrides epochs, and every schedule scales with it
    lr: float = 7e-4                 # peak learning rate per 256 samples: peak = lr·B/256
    warmup_epochs: float = 3.0       # linear warm-up, as a share of epochs (3 of 100 -> 3% of the steps)
    weight_decay: float = 0.05       # start of the cosine weight-decay schedule
    weight_decay_end: float = 0.3    # its end
    weight_decay_params: str = "all"  # all: every parameter decayed, as the published run | dino: not biases, norms, embeddings
    ema_momentum: float = 0.99       # teacher momentum at step 0; cosine up to 1 at the end
    ttr_weight: float = 0.5          # w(0) of L_TTR; cosine to 0 over its first ttr_epochs
    ttr_epochs: float = 5.0          # L_TTR's window as a share of epochs, like warm-up (5 of 100 -> 5% of the steps)
    tok_weight: float = 0.5          # weight of L_Tok
    mask_prob: float = 0.5           # share of batches that are slice-masked (others: full input, no L_Tok)
    eps: float = 0.05                # coding-rate epsilon
    clip_grad: float = 1.0           # gradient-norm clip
    init_from: Optional[str] = None  # start student, teacher and head from a model: the authors' .pth, or our teacher.pt / state.pt (fresh optimizer)
    # --- run
    out: Optional[str] = None        # output folder; None -> runs/<preset>
    resume: bool = False             # continue the run in --out from its state.pt
    overwrite: bool = False          # start afresh even if --out already holds a run
    seed: int = 0
    log_every: int = 20              # log line + log.jsonl entry every k steps
    ckpt_every: int = 500            # write teacher.pt + state.pt every k steps (and at the end)
    device: str = "auto"             # auto (cuda if available) | cpu | cuda | cuda:1 ...
    no_kernels: bool = False         # use the plain-PyTorch paths instead of the Triton kernels
    precision: str = "auto"          # auto (bf16 autocast on CUDA and on CPUs with native bf16, else fp32) | fp32 | bf16
    compile: str = "auto"            # torch.compile the student/teacher forward: auto (on for CUDA, off on CPU) | on | off
    eval_scans: int = 256            # scans used for the subject-separation check at start and end (0 = skip)


def build_parser():
    """One option per TrainConfig field, help text = the field's comment in the source."""
    import inspect
    src = inspect.getsource(TrainConfig)
    helps = {}
    for line in src.splitlines():
        line = line.strip()
        if ":" in line and "#" in line and not line.startswith("#"):
            helps[line.split(":")[0].strip()] = line.split("#", 1)[1].strip()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        h = helps.get(f.name, "").replace("%", "%%")
        if f.type is bool:
            p.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=h)
            continue
        kind = {Optional[int]: int, Optional[float]: float, Optional[str]: str}.get(f.type, f.type)
        extra = {"choices": ["paper", "demo"]} if f.name == "preset" else {}
        extra = {"choices": ["SCT", "STC"]} if f.name == "layout" else extra
        extra = {"choices": list(runtime.PRECISIONS)} if f.name == "precision" else extra
        extra = {"choices": list(runtime.COMPILE_CHOICES)} if f.name == "compile" else extra
        p.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=f"{h} (default: {f.default})", **extra)
    return p


def resolve_config(given: dict) -> TrainConfig:
    """Fill the preset-dependent defaults. `given` holds only what the user set explicitly."""
    cfg = TrainConfig(**given)
    if cfg.preset is None:
        cfg.preset = "demo" if cfg.data is None else "paper"
    for k, v in PRESET_TRAINING[cfg.preset].items():
        if k not in given and not (k == "steps" and "epochs" in given):
            setattr(cfg, k, v)
    if cfg.out is None:
        cfg.out = os.path.join("runs", cfg.preset)
    return cfg


def encoder_config(cfg: TrainConfig) -> EncoderConfig:
    enc = EncoderConfig.preset(cfg.preset)
    over = {k: getattr(cfg, k) for k in ("dim", "depth", "heads", "proj_hidden", "init") if getattr(cfg, k) is not None}
    return dataclasses.replace(enc, **over)


# ----------------------------------------------------------------------------- schedules (SPEC §7-8)
# Pure functions of the step; `total` is the number of optimizer steps of the run.

def steps_per_epoch(n_subjects, batch_size):
    return max(1, n_subjects // batch_size)


def warmup_steps(total, warmup_epochs=3.0, epochs=100):
    return int(round(total * warmup_epochs / epochs))


def lr_at(step, total, warmup, peak):
    """Linear warm-up from 0 to `peak` over `warmup` steps, then cosine to 0 at `total`."""
    if step < warmup:
        return peak * step / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def weight_decay_at(step, total, start=0.05, end=0.3):
    """Cosine from `start` (step 0) up to `end` (step total)."""
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * step / total))


def ema_momentum_at(step, total, base=0.99):
    """m = 1 − (1 − base)·(cos(π·step/total) + 1)/2: base at step 0, 1 at the end."""
    return 1 - (1 - base) * (math.cos(math.pi * step / total) + 1) / 2


def ttr_weight_at(step, window, weight=0.5):
    """w = weight·(1 + cos(π·step/S))/2 for step < S = `window` steps (5 epochs in the paper), 0 afterwards."""
    return weight * (1 + math.cos(math.pi * step / window)) / 2 if step < window else 0.0


# ----------------------------------------------------------------------------- model

class SelfDistillNet(nn.Module):
    """Encoder + the one shared projection head (SPEC §6). Student and teacher are two of these.

    forward(x (V·B, C, T'), mask (V·B, N, P) or None, with_tokens) -> dict of
      cls (V·B, D), z_cls (V·B, p), z_net (V·B, N, p) and, with_tokens, z_tok (V·B, N·P, p).
    The head runs once on all rows (CLS, network summaries, tokens) concatenated.
    """

    def __init__(self, encoder: Encoder, head: ProjectionHead):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x, mask=None, with_tokens=False):
        cls, tok = self.encoder(x, mask)                       # (VB, D), (VB, N·P, D)
        VB, NP, D = tok.shape
        N = self.encoder.n_networks
        net = network_summaries(tok, N)                        # (VB, N, D) for L_TTR
        rows = [cls, net.reshape(VB * N, D)] + ([tok.reshape(VB * NP, D)] if with_tokens else [])
        z = self.head(torch.cat(rows))                         # (VB·(1+N[+N·P]), p)
        z = z.float() if z.dtype in (torch.bfloat16, torch.float16) else z  # losses in fp32 at least
        out = {"cls": cls, "z_cls": z[:VB], "z_net": z[VB:VB * (1 + N)].view(VB, N, -1)}
        if with_tokens:
            out["z_tok"] = z[VB * (1 + N):].view(VB, NP, -1)   # (VB, N·P, p)
        return out


def build_models(enc_cfg: EncoderConfig, network_map, seed):
    torch.manual_seed(seed)  # same initial weights on every process
    student = SelfDistillNet(Encoder(enc_cfg, network_map),
                             ProjectionHead(enc_cfg.dim, enc_cfg.proj_hidden, enc_cfg.proj_dim))
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return student, teacher


@torch.no_grad()
def ema_update(teacher_params, student_params, m):
    """teacher ← m·teacher + (1 − m)·student, encoder and head (SPEC §6)."""
    torch._foreach_lerp_(teacher_params, student_params, 1 - m)  # one pass over the weights


WEIGHT_DECAY_POLICIES = ("all", "dino")


def param_groups(model, policy="all"):
    """AdamW parameter groups.

    "all" (the published run): every parameter is weight-decayed, biases, norms, embeddings and
    tokenizer included. "dino": no decay on biases, norm weights, LayerScale and the CLS / mask /
    network embeddings (DINO's convention), decay on the rest."""
    if policy not in WEIGHT_DECAY_POLICIES:
        raise ValueError(f"unknown weight-decay policy {policy!r}; choose one of {WEIGHT_DECAY_POLICIES}")
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        plain = policy == "dino" and (p.ndim <= 1 or leaf.endswith("bias") or "norm" in name
                                      or leaf in ("cls_token", "mask_token", "network_embed"))
        (no_decay if plain else decay).append(p)
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "apply_wd": False, "weight_decay": 0.0}]


def _gather(z):
    """(m, ...) on this process -> (world·m, ...) global batch. Differentiable: the backward sums the
    gradients of every process's (identical) global loss, DDP then averages -> single-process result."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z
    with warnings.catch_warnings():  # deprecated in favour of a private API; the public one is kept on purpose
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(torch.distributed.nn.functional.all_gather(z))


def compute_losses(student, teacher, x1, x2, mask, ttr_w, tok_w=0.5, eps=0.05, amp=False):
    """The training objective for one batch (SPEC §7).

    x1, x2: (B, C, T') the two views; mask: (2B, N, P) bool for the concatenated views, or None.
    Returns a dict of scalar tensors: loss (to backpropagate), cls, ttr, tok, comp, expa (of L_CLS),
    and collapse monitors std_s, std_t (std of normalised CLS projections), cos_t (mean pairwise
    cosine of teacher CLS). With several processes the MCR terms use the global batch.
    """
    B = x1.shape[0]
    x = torch.cat([x1, x2])                                    # (2B, C, T'): both views in one call
    masked = mask is not None
    with runtime.autocast(x.device, "bf16" if amp else "fp32"):  # fp32: no autocast at all (any device, meta too)
        with torch.no_grad():
            t = teacher(x, None, with_tokens=masked)           # the teacher never sees a mask
        s = student(x, mask, with_tokens=masked)

    def views(z):                                              # (2B, ...) -> two global (m, p) views
        return tuple(_gather(v.reshape(-1, v.shape[-1])) for v in (z[:B], z[B:]))

    cls, comp, expa = mcr_loss(views(s["z_cls"]), views(t["z_cls"]), eps)
    ttr = ttr_loss(views(s["z_net"]), views(t["z_net"]), eps)[0] if ttr_w > 0 else cls.new_zeros(())
    tok = token_loss(s["z_tok"], t["z_tok"], mask) if masked else cls.new_zeros(())
    loss = cls + ttr_w * ttr + tok_w * tok
    with torch.no_grad():
        tc = F.normalize(t["cls"].float(), dim=-1)             # (2B, D)
        n = tc.shape[0]
        cos_t = ((tc @ tc.T).sum() - n) / (n * (n - 1))
    return {"loss": loss, "cls": cls, "ttr": ttr, "tok": tok, "comp": comp, "expa": expa,
            "std_s": s["z_cls"].detach().std(0).mean(), "std_t": t["z_cls"].std(0).mean(), "cos_t": cos_t}


@torch.no_grad()
def subject_separation(encoder, crops, subjects):
    """How well the encoder's CLS tells subjects apart ("does the run learn").

    crops: (S, 2, C, T') two crops per scan; subjects: S ids, some subjects with several scans.
    Compares the CLS of crop 0 of scan i with crop 1 of scan j (i ≠ j): pairs of different scans of
    the same subject vs pairs of different subjects. Returns same/diff mean cosine, their gap and the
    AUROC of cosine as a same-subject detector (0.5 = no separation), and the mean pairwise cosine.
    """
    from sklearn.metrics import roc_auc_score
    was_training = encoder.training
    encoder.eval()
    S = crops.shape[0]
    cls = torch.cat([encoder(c)[0] for c in crops.flatten(0, 1).split(128)])     # (2S, D)
    encoder.train(was_training)
    z = F.normalize(cls.float(), dim=-1).view(S, 2, -1)
    cos = (z[:, 0] @ z[:, 1].T).cpu().numpy()                                    # (S, S)
    ids = np.asarray(subjects)
    same = ids[:, None] == ids[None, :]
    off = ~np.eye(S, dtype=bool)
    if not (same & off).any() or not (~same).any():
        raise ValueError("subject separation needs several scans of some subjects and several subjects")
    a, b = cos[same & off], cos[~same]
    zz = z[:, 0]
    return {"same": float(a.mean()), "diff": float(b.mean()), "gap": float(a.mean() - b.mean()),
            "auroc": float(roc_auc_score(np.r_[np.ones(a.size), np.zeros(b.size)], np.r_[a, b])),
            "mean_cos": float(((zz @ zz.T).sum() - S) / (S * (S - 1)))}


def separation_crops(scans, n_scans, crop_len):
    """(S', 2, C, T') z-scored crops (first and last of the scan) of up to n_scans scans of subjects
    that have ≥ 2 scans; (None, None) when the data have too few such subjects."""
    ids = np.asarray(scans.subjects)
    _, inv, counts = np.unique(ids, return_inverse=True, return_counts=True)
    keep = np.flatnonzero(counts[inv] >= 2)[:n_scans]
    if len(keep) < 4 or len(np.unique(ids[keep])) < 2:
        return None, None
    crops = probe_crops(scans, keep, crop_len=crop_len, n_crops=2)   # (S', 2, C, T') first + last crop
    return crops, ids[keep].tolist()


# ----------------------------------------------------------------------------- training loop

class Trainer:
    """Student, EMA teacher, optimizer and batch source; `step(i)` is one optimizer step (SPEC §6-8).

    All randomness of a step is drawn from generators re-seeded from (seed, step, rank), and the batch
    source resumes from counters, so `state_dict()` + the step number resume a run exactly."""

    def __init__(self, cfg, enc_cfg, network_map, batches, total, device, rank=0, world=1, compile_backend="inductor"):
        self.cfg, self.batches, self.total, self.device, self.rank, self.world = cfg, batches, total, device, rank, world
        self.local_b = cfg.batch_size // world
        self.warmup = warmup_steps(total, cfg.warmup_epochs, cfg.epochs)
        self.ttr_steps = warmup_steps(total, cfg.ttr_epochs, cfg.epochs)  # L_TTR's window, in epochs as theirs
        self.peak_lr = cfg.lr * cfg.batch_size / 256
        self.student, self.teacher = build_models(enc_cfg, network_map, cfg.seed)
        self.student.to(device)
        self.teacher.to(device)
        # fused: one pass over each weight per step (CPU and CUDA), instead of ~10 elementwise ops
        self.opt = torch.optim.AdamW(param_groups(self.student, cfg.weight_decay_params), lr=self.peak_lr, fused=True)
        self.model = self.student
        if world > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.student, device_ids=[device.index] if device.type == "cuda" else None)
        self.precision, self.precision_reason = runtime.resolve_precision(cfg.precision, device)
        self.amp = self.precision == "bf16"          # compute_losses autocasts to bf16 on x's device type
        self.compiled, self.compile_reason = runtime.resolve_compile(cfg.compile, device)
        # the forwards are compiled, the modules are not: state_dict keys and the EMA stay as they are.
        # The Triton kernels run inside as graph breaks (kernels/__init__.py says why)
        # (compile_backend: "aot_eager" traces without generating code, for CPU checks in seconds)
        self.fwd_student, self.fwd_teacher = ((torch.compile(self.model, backend=compile_backend),
                                               torch.compile(self.teacher, backend=compile_backend))
                                              if self.compiled else (self.model, self.teacher))
        self.t_params, self.s_params = list(self.teacher.parameters()), list(self.student.parameters())
        self.mask_gen = torch.Generator(device=device)  # slice masks drawn on the device: no host-device copy

    def step(self, step):
        """One optimizer step + EMA update at step `step`: draws the batch and the mask, evaluates the
        schedules, then `update`. Returns update's dict plus the python values masked, lr, wd, ema, ttr_w."""
        cfg, total, b = self.cfg, self.total, self.local_b
        sched = dict(lr=lr_at(step, total, self.warmup, self.peak_lr),
                     wd=weight_decay_at(step, total, cfg.weight_decay, cfg.weight_decay_end),
                     ema=ema_momentum_at(step, total, cfg.ema_momentum),
                     ttr_w=ttr_weight_at(step, self.ttr_steps, cfg.ttr_weight))
        x1, x2 = self.batches.next_batch(b)                           # (b, C, T') each
        N, P = self.student.encoder.n_networks, self.student.encoder.n_patches
        masked = seeding.rng(cfg.seed, 1, step).random() < cfg.mask_prob  # same on all processes
        if masked:
            self.mask_gen.manual_seed(seeding.torch_seed(cfg.seed, 2, step, self.rank))
            mask = slice_mask(2 * b, N, P, generator=self.mask_gen, device=self.device)  # (2b, N, P)
        elif self.world > 1:  # an all-False mask keeps the mask embedding in DDP's graph (no find_unused_parameters)
            mask = torch.zeros(2 * b, N, P, dtype=torch.bool, device=self.device)
        else:
            mask = None
        r = self.update(x1, x2, mask, **sched)
        r.update(masked=masked, **sched)
        return r

    def update(self, x1, x2, mask, lr, wd, ema, ttr_w):
        """The optimizer step on given views (b, C, T'), mask (2b, N, P) or None and schedule values:
        losses, backward, grad-norm clip, AdamW with (lr, wd), EMA with momentum `ema`. Returns the
        compute_losses dict (device tensors, no sync) plus grad_norm."""
        for g in self.opt.param_groups:
            g["lr"] = lr
            if g["apply_wd"]:
                g["weight_decay"] = wd
        r = compute_losses(self.fwd_student, self.fwd_teacher, x1, x2, mask, ttr_w, self.cfg.tok_weight,
                           self.cfg.eps, self.amp)
        self.opt.zero_grad(set_to_none=True)
        r["loss"].backward()
        r["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.s_params, self.cfg.clip_grad, foreach=True)
        self.opt.step()
        ema_update(self.t_params, self.s_params, ema)
        return r

    def init_from(self, states):
        """Start student and teacher from pretrained weights (checkpoint.load_init): encoders and, where
        the file has it, the projection head; the optimizer stays fresh."""
        for net, st in ((self.student, states["student"]), (self.teacher, states["teacher"])):
            net.encoder.load_state_dict(st["encoder"])
            if st.get("head") is not None:
                net.head.load_state_dict(st["head"])

    def state_dict(self):
        return {"student": self.student.state_dict(), "teacher": self.teacher.state_dict(),
                "optimizer": self.opt.state_dict(), "sampler": self.batches.state_dict()}

    def load_state_dict(self, state):
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.opt.load_state_dict(state["optimizer"])
        self.batches.load_state_dict(state["sampler"])


def load_init_weights(path, enc_cfg, network_map):
    """--init-from: the checkpoint's weights, after checking they fit this run's architecture and map."""
    ckpt_cfg, m, states = checkpoint.load_init(path, network_map)
    checkpoint.check_architecture(enc_cfg, ckpt_cfg, path)
    if not np.array_equal(m, network_map):
        raise ValueError(f"--init-from {path}: the checkpoint was trained with another ROI -> network map "
                         f"({len(m)} ROIs, {int(m.max()) + 1} networks); pass that map with --networks")
    return states


class NonFiniteLoss(RuntimeError):
    pass


def _setup_distributed(device_arg):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = runtime.resolve_device(device_arg, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def _say(rank, *a):
    if rank == 0:
        print(*a, flush=True)


def plot_curves(log, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [r["step"] for r in log]
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    for k in ("cls", "ttr", "tok", "comp", "expa"):
        ax[0].plot(steps, [r[k] for r in log], label=k)
    ax[0].set_title("losses")
    for k in ("std_s", "std_t"):
        ax[1].plot(steps, [r[k] for r in log], label=k)
    ax[1].set_title("std of normalised CLS projections")
    ax[2].plot(steps, [r["cos_t"] for r in log], label="teacher CLS mean pairwise cos")
    ax[2].set_title("collapse monitor (→1 = collapse)")
    for a in ax:
        a.set_xlabel("step")
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train(cfg: TrainConfig, given=()):
    """Run (or resume) pretraining as configured; returns a summary dict (rank 0).
    `given`: the option names set explicitly (on --resume they must agree with the saved run)."""
    rank, world, device = _setup_distributed(cfg.device)
    runtime.tune_cpu(device)  # flush denormals; on a CPU run keep freed memory (runtime.py says why)
    kernels.set_enabled(not cfg.no_kernels)
    out = cfg.out
    state_path, teacher_path = os.path.join(out, "state.pt"), os.path.join(out, "teacher.pt")
    state = None
    if cfg.resume:
        if not os.path.exists(state_path):
            raise ValueError(f"--resume: no {state_path} to resume from")
        state = checkpoint.load_state(state_path)
        saved = state["config"]
        clash = [f"--{k.replace('_', '-')} {getattr(cfg, k)} (saved: {saved.get(k)})" for k in given
                 if k not in KEEP_ON_RESUME and getattr(cfg, k) != saved.get(k)]
        if clash:
            raise ValueError(f"--resume continues the run saved in {out}, but these options differ from it: "
                             f"{', '.join(clash)}. Drop them, or start a new run with another --out")
        cfg = TrainConfig(**{**saved, **{k: getattr(cfg, k) for k in KEEP_ON_RESUME}})
        _say(rank, f"resuming {out} from step {state['step']}")
    elif os.path.exists(state_path) and not cfg.overwrite:
        prev = checkpoint.load_state(state_path)
        raise ValueError(f"{out} already holds a run (step {prev['step']} of {prev['total_steps']}); pass "
                         f"--resume to continue it, --overwrite to start afresh, or another --out")

    # --- data
    if cfg.data is None:
        folder = synthetic.ensure_synthetic_cohort()
        path = os.path.join(folder, "pretrain.npy")
        _say(rank, f"no --data given: training on the built-in SYNTHETIC cohort {path} "
                   "(random stand-in data for trying the pipeline, not real fMRI)")
    else:
        path = cfg.data
    scans = data.load_scans(path, layout=cfg.layout, tr=cfg.tr)
    enc_cfg = encoder_config(cfg)
    if cfg.networks.startswith("auto:"):
        try:
            k = int(cfg.networks[5:])
        except ValueError:
            raise ValueError(f"--networks {cfg.networks}: expected auto:K with an integer K, e.g. auto:9") from None
        fc = group_fc(scans, max_scans=2000, seed=cfg.seed)  # a group mean: 2000 scans are plenty
        network_map = networks.cluster_networks(fc, k, seed=cfg.seed)
        if rank == 0:
            os.makedirs(out, exist_ok=True)
            networks.plot_network_fc(fc, network_map, os.path.join(out, "network_fc.png"))
    else:
        network_map = networks.load_network_map(cfg.networks, n_rois=scans.n_rois)
    network_map = networks.validate_network_map(network_map, n_rois=scans.n_rois)
    n_subjects = len(set(scans.subjects))
    if cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by the {world} processes")
    if n_subjects < cfg.batch_size:
        raise ValueError(f"the data have {n_subjects} subjects ({len(scans)} scans) but --batch-size is "
                         f"{cfg.batch_size}; use a batch size of at most {n_subjects}")
    batches = TrainBatches(scans, device=device, crop_len=enc_cfg.crop_len, seed=cfg.seed,
                           rank=rank, world_size=world)

    spe = steps_per_epoch(n_subjects, cfg.batch_size)
    total = cfg.steps if cfg.steps is not None else cfg.epochs * spe
    if total < 1:
        raise ValueError(f"--steps must be at least 1 (got {total})")
    tr = Trainer(cfg, enc_cfg, network_map, batches, total, device, rank, world)
    log, start, separation = [], 0, {}
    if state is not None:
        tr.load_state_dict(state)
        log, start, separation = state["log"], state["step"], state.get("separation", {})
    elif cfg.init_from:
        states = load_init_weights(cfg.init_from, enc_cfg, network_map)
        tr.init_from(states)
        _say(rank, f"initialised student and teacher from {cfg.init_from}" + (
            " (encoders and projection head)" if states["student"]["head"] is not None else
            " (encoders; its file stores no projection head, which starts fresh)"))
    teacher, N = tr.teacher, tr.student.encoder.n_networks

    resolved = asdict(cfg)
    # what --precision/--compile resolved to on this machine, and why; stored beside the config (not in
    # it, so that a resume on another machine resolves "auto" afresh)
    machine = {"device": str(device), "precision": tr.precision, "precision_reason": tr.precision_reason,
               "compile": tr.compiled, "compile_reason": tr.compile_reason}
    if rank == 0:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump({"train": resolved, "encoder": asdict(enc_cfg), "runtime": machine}, f, indent=2)
        print("config: " + json.dumps(resolved), flush=True)
        print(f"encoder: {json.dumps(asdict(enc_cfg))}", flush=True)
        print(f"data: {len(scans)} scans, {n_subjects} subjects, {scans.n_rois} ROIs, {N} networks; "
              f"{spe} steps/epoch, {total} steps, warm-up {tr.warmup}, peak lr {tr.peak_lr:.2e}, "
              f"{world} process(es) x batch {tr.local_b}, device {device}, "
              f"{'bf16 autocast' if tr.amp else 'fp32'} ({tr.precision_reason}), "
              f"compile {'on' if tr.compiled else 'off'} ({tr.compile_reason})", flush=True)
        print(f"parameters: student {sum(p.numel() for p in tr.s_params) / 1e6:.1f}M "
              f"(AdamW, weight decay on {'every parameter' if cfg.weight_decay_params == 'all' else 'all but biases, norms, embeddings'}; "
              f"init {enc_cfg.init})", flush=True)
    sep_data = separation_crops(scans, cfg.eval_scans, enc_cfg.crop_len) if (rank == 0 and cfg.eval_scans) else (None, None)
    if sep_data[0] is not None and "start" not in separation:
        separation["start"] = subject_separation(teacher.encoder, sep_data[0].to(device), sep_data[1])
        _say(rank, f"subject separation at step 0: {json.dumps(separation['start'])}")

    jsonl = os.path.join(out, "log.jsonl")
    if rank == 0:
        with open(jsonl, "w") as f:  # rewritten from the checkpoint's log on resume: no duplicate steps
            f.writelines(json.dumps(r) + "\n" for r in log)

    keys = ("loss", "cls", "ttr", "tok", "comp", "expa", "std_s", "std_t", "cos_t", "grad_norm")
    acc = torch.zeros(len(keys) + 1, device=device)      # sums over the log window (+ masked batches), synced at log steps
    first_bad = torch.full((5,), -1, dtype=torch.long, device=device)  # first step each term went non-finite
    bad_names = ("cls", "ttr", "tok", "loss", "grad_norm")  # a component first: it says more than "loss"

    def check_finite():
        fb = first_bad.clone()
        if world > 1:  # every process must stop together
            fb = torch.where(fb < 0, total, fb)
            dist.all_reduce(fb, op=dist.ReduceOp.MIN)
            fb = torch.where(fb == total, -1, fb)
        fb = fb.tolist()
        if max(fb) >= 0:
            i = min((s, i) for i, s in enumerate(fb) if s >= 0)[1]
            raise NonFiniteLoss(f"non-finite {bad_names[i]} at step {fb[i] + 1}: stopping. The last good "
                                f"checkpoint in {out} is intact; try a lower --lr or check the data")

    def save(step):
        check_finite()  # never overwrite a good checkpoint with diverged weights
        if rank == 0:  # the sampler state is the same on every process (counters); the other
            # randomness is re-seeded from (seed, step, rank) every step, so nothing else is needed
            checkpoint.save_state(state_path, config=resolved, encoder_config=asdict(enc_cfg), step=step,
                                  total_steps=total, log=log, separation=separation, runtime=machine,
                                  network_map=torch.as_tensor(network_map), **tr.state_dict())
            checkpoint.save_teacher(teacher_path, teacher.encoder, network_map, step, {**resolved, "runtime": machine})
            print(f"checkpoint: step {step} -> {teacher_path}, {state_path}", flush=True)

    t_window, n_window, t_run = time.time(), 0, 0.0
    for step in range(start, total):
        r = tr.step(step)
        with torch.no_grad():
            vals = torch.stack([r[k].detach().float() for k in keys])
            acc[:-1] += vals
            acc[-1] += float(r["masked"])
            term = vals[[1, 2, 3, 0, 9]]
            first_bad.copy_(torch.where((first_bad < 0) & ~torch.isfinite(term), step, first_bad))
        n_window += 1
        done = step + 1
        if done % cfg.log_every == 0 or done == total:
            check_finite()
            if world > 1:
                dist.all_reduce(acc)
                acc /= world
            a = acc.tolist()
            rec = {k: v / n_window for k, v in zip(keys, a)}
            rec["tok"] = a[3] / max(1.0, a[-1])  # L_Tok averaged over the masked batches only
            dt = time.time() - t_window
            t_run += dt
            rec.update(step=done, lr=r["lr"], wd=r["wd"], ema=r["ema"], ttr_w=r["ttr_w"],
                       samples_per_s=n_window * cfg.batch_size / dt, s_per_step=dt / n_window)
            log.append(rec)
            if rank == 0:
                eta = (total - done) * t_run / (done - start)
                print(f"step {done:>6}/{total} | loss {rec['loss']:+.3f} cls {rec['cls']:+.3f} ttr {rec['ttr']:+.3f} "
                      f"tok {rec['tok']:+.3f} comp {rec['comp']:.3f} expa {rec['expa']:.3f} | lr {rec['lr']:.2e} "
                      f"ema {rec['ema']:.4f} | std s {rec['std_s']:.3f} t {rec['std_t']:.3f} cos_t {rec['cos_t']:.3f} | "
                      f"{rec['samples_per_s']:.1f} samples/s, {rec['s_per_step']:.2f} s/step, "
                      f"ETA {eta / 60:.1f} min", flush=True)
                with open(jsonl, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            acc.zero_()
            t_window, n_window = time.time(), 0
        if done % cfg.ckpt_every == 0 and done != total:
            save(done)

    if sep_data[0] is not None:
        separation["end"] = subject_separation(teacher.encoder, sep_data[0].to(device), sep_data[1])
    save(total)
    if rank == 0:
        if "end" in separation:
            s0, s1 = separation.get("start"), separation["end"]
            print(f"subject separation (teacher CLS, same- vs different-subject scans): "
                  + (f"start AUROC {s0['auroc']:.3f} gap {s0['gap']:+.3f} -> " if s0 else "")
                  + f"end AUROC {s1['auroc']:.3f} gap {s1['gap']:+.3f}, mean pairwise cos {s1['mean_cos']:.3f}",
                  flush=True)
        if log:
            plot_curves(log, os.path.join(out, "curves.png"))
        print(f"done: {teacher_path}", flush=True)
    if world > 1:
        dist.destroy_process_group()
    return {"out": out, "teacher": teacher_path, "log": log, "separation": separation, "step": total}


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING,
                        format="%(message)s")
    cfg = resolve_config(vars(args))
    try:
        train(cfg, given=tuple(vars(args)))
    except (ValueError, NonFiniteLoss) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2 if isinstance(e, ValueError) else 3)
    except KeyboardInterrupt:
        print(f"\ninterrupted: continue from the last checkpoint with  python train.py --out {cfg.out} --resume",
              file=sys.stderr, flush=True)
        sys.exit(130)


if __name__ == "__main__":
    main()

"""The self-distillation objective and its EMA teacher (SPEC §6-§7).

Student and teacher are two `SelfDistillNet`s: the encoder (tokenizer + transformer, encoder.py)
and the one projection head shared by all three losses. The teacher is a copy of the student that
gets no gradients and is never masked; after every optimizer step it moves towards the student,
teacher ← m·teacher + (1 − m)·student (`ema_update`, SPEC §6). `compute_losses` is one batch of the
objective: L = L_CLS + w·L_TTR + 0.5·L_Tok, all MCR-style, no softmax, no centring (SPEC §7;
the losses themselves are in losses.py), plus the collapse monitors a run logs. `param_groups`
says which parameters AdamW weight-decays (SPEC §8). trainer.py drives these step by step.

    python -m pytest -q tests/test_train.py tests/test_authors.py
"""
import copy
import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401 -- _gather's differentiable all_gather lives there
import torch.nn as nn
import torch.nn.functional as F

import runtime
from encoder import Encoder, EncoderConfig
from losses import ProjectionHead, _exact, mcr_loss, network_summaries, token_loss, ttr_loss


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
        z = _exact(self.head(torch.cat(rows)))                 # (VB·(1+N[+N·P]), p); losses in fp32 at least
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


def compute_losses(student, teacher, x1, x2, mask, ttr_w, tok_w=0.5, eps=0.05, precision="fp32", masked=None):
    """The training objective for one batch (SPEC §7).

    x1, x2: (B, C, T') the two views; mask: (2B, N, P) bool for the concatenated views, or None.
    masked: is this a masked batch (L_Tok on the masked tokens)? Default: a mask is given. Under DDP an
    unmasked batch passes an all-False mask with masked=False: the student still takes the mask (so
    the mask embedding stays in DDP's graph), but no token is projected and L_Tok is 0. precision: "fp32"
    or "bf16", the forwards' autocast on x's device (runtime.resolve_precision resolves "auto").
    Returns a dict of scalar tensors: loss (to backpropagate), cls, ttr, tok, comp, expa (of L_CLS),
    and collapse monitors std_s, std_t (std of normalised CLS projections), cos_t (mean pairwise
    cosine of teacher CLS). With several processes the MCR terms use the global batch.
    """
    B = x1.shape[0]
    x = torch.cat([x1, x2])                                    # (2B, C, T'): both views in one call
    masked = mask is not None if masked is None else masked
    with runtime.autocast(x.device, precision):                # fp32: no autocast at all (any device, meta too)
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

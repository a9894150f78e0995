"""The self-distillation objective of Brain-Semantoks: projection head, losses, EMA teacher (SPEC §6-7).

Student and teacher are two `SelfDistillNet`s: the encoder (tokenizer + transformer, encoder.py)
and the one projection head shared by all three losses. The teacher is a copy of the student that
gets no gradients and is never masked; after every optimizer step it moves towards the student,
teacher <- m·teacher + (1 - m)·student (`ema_update`, SPEC §6).

No softmax, centring or temperature (SimDINO style): the student is pulled towards the teacher by a
cosine (compression) while a coding-rate term keeps the batch of projections spread out (expansion).

    R_eps(Z)  = 1/2 logdet(I_p + p/(m eps) Z^T Z)                    Z (m, p), eps = 0.05
    comp      = 1/2 [mean_b cos(t1_b, s2_b) + mean_b cos(t2_b, s1_b)]   (cross-view pairs)
    expa      = gamma * 1/2 sum_v R_eps((s_v + t_v) / 2),   gamma = (p + m) / (p m)
    L_MCR     = -comp - expa

L_CLS = L_MCR on projected CLS tokens; L_TTR = L_MCR on projected per-network token means;
L_Tok = -cos(head(teacher token), head(student token)) at masked positions. Teacher inputs are
detached here, so callers may pass teacher outputs that still carry a graph. Under DDP the
projections are gathered across ranks first (`compute_losses`): m is always the number of rows given.
`compute_losses` is one batch of the objective, L = c·L_CLS + w·L_TTR + 0.5·L_Tok (c = 1; 0 is the
paper's "no L_CLS" ablation), plus the collapse
monitors a run logs; training/trainer.py drives it step by step.

    python -m pytest -q tests/test_losses.py tests/test_train.py tests/test_authors.py
"""
import copy
import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401 -- _gather's differentiable all_gather lives there
import torch.nn as nn
import torch.nn.functional as F

import kernels
from encoder import Encoder, EncoderConfig
from machine import runtime


class ProjectionHead(nn.Module):
    """Linear(D -> hidden) -> GELU -> Linear(hidden -> p) -> L2-normalise (SPEC §6)."""

    def __init__(self, dim, hidden=1024, out=128):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out)
        for fc in (self.fc1, self.fc2):
            nn.init.trunc_normal_(fc.weight, std=0.02)
            nn.init.zeros_(fc.bias)

    def forward(self, x):
        return F.normalize(self.fc2(F.gelu(self.fc1(x))), dim=-1)


def _exact(z):
    """Loss statistics are computed in float32 at least (float64 stays float64), outside autocast."""
    return z.float() if z.dtype not in (torch.float32, torch.float64) else z


def coding_rate(z, eps=0.05):
    """R_eps(Z) = 1/2 logdet(I_p + p/(m eps) Z^T Z) for Z (m, p), via Cholesky (A is SPD)."""
    if z.ndim != 2:
        raise ValueError(f"coding_rate expects Z of shape (m, p), got {tuple(z.shape)}")
    m, p = z.shape
    with runtime.no_autocast(z.device):
        z = _exact(z)
        a = torch.eye(p, dtype=z.dtype, device=z.device) + (p / (m * eps)) * (z.T @ z)  # (p, p)
        # A = I + PSD is always SPD, so skip cholesky's info check (a GPU->CPU sync every call)
        return torch.linalg.cholesky_ex(a).L.diagonal().log().sum()    # 1/2 logdet = sum log diag(L)


def mcr_loss_reference(student_views, teacher_views, eps=0.05):
    """L_MCR (SPEC §7) in plain PyTorch, the ground truth. Views: 2-tuples of (m, p) -> (loss, comp, expa)."""
    kernels.check_views(student_views, teacher_views)
    with runtime.no_autocast(student_views[0].device):
        s1, s2 = (_exact(s) for s in student_views)
        t1, t2 = (_exact(t.detach()) for t in teacher_views)
        m, p = s1.shape
        comp = 0.5 * (F.cosine_similarity(t1, s2, dim=-1).mean() + F.cosine_similarity(t2, s1, dim=-1).mean())
        gamma = (p + m) / (p * m)
        expa = gamma * 0.5 * (coding_rate((s1 + t1) / 2, eps) + coding_rate((s2 + t2) / 2, eps))
        return -comp - expa, comp, expa


def mcr_loss(student_views, teacher_views, eps=0.05):
    """L_MCR by the path kernels.mcr_path picks: the reference above, or the Triton kernel."""
    return kernels.mcr_loss(student_views, teacher_views, eps, reference=mcr_loss_reference)


def network_summaries(tokens, n_networks):
    """L_TTR's summary tokens: each network's P output tokens averaged, masked positions included.

    tokens (B, N*P, D) in network-major order -> (B, N, D)."""
    B, S, D = tokens.shape
    if S % n_networks:
        raise ValueError(f"tokens have {S} positions, not a multiple of N = {n_networks} networks")
    return tokens.view(B, n_networks, S // n_networks, D).mean(2)       # (B, N, D)


def ttr_loss(student_views, teacher_views, eps=0.05):
    """L_TTR (teacher-guided temporal regularisation) = L_MCR across the two views on the projected
    network summaries, one row per (sample, network): m = B*N.

    student_views / teacher_views: 2-tuples of (B, N, p) or (B*N, p) projected summaries (the
    projection runs in the caller, once for CLS, summaries and tokens). Returns (loss, comp, expa)."""
    flat = lambda views: tuple(v.reshape(-1, v.shape[-1]) for v in views)   # (B*N, p) each
    return mcr_loss(flat(student_views), flat(teacher_views), eps)


def token_loss(student_tok_proj, teacher_tok_proj, mask):
    """L_Tok: -cos(teacher, student) at masked positions, averaged over each sample's masked tokens,
    then over the samples that have any. A sample is one crop: compute_losses passes both views'
    crops at once (B = 2·batch), so the views are averaged together, crop by crop.

    student_tok_proj, teacher_tok_proj: projected tokens (B, N*P, p) or (B, N, P, p), from the
    masked student and the unmasked teacher of the same crops; mask: bool (B, N, P) or (B, N*P).
    Returns 0 (still attached to the graph) if nothing is masked."""
    B, p = student_tok_proj.shape[0], student_tok_proj.shape[-1]
    s = student_tok_proj.reshape(B, -1, p)                              # (B, N*P, p)
    t = teacher_tok_proj.detach().reshape(B, -1, p)                     # (B, N*P, p)
    mask = mask.reshape(B, -1)                                          # (B, N*P)
    if s.shape != t.shape or mask.shape != s.shape[:2]:
        raise ValueError(f"token_loss shapes disagree: student {tuple(student_tok_proj.shape)}, "
                         f"teacher {tuple(teacher_tok_proj.shape)}, mask {tuple(mask.shape)}")
    with runtime.no_autocast(s.device):
        cos = F.cosine_similarity(_exact(s), _exact(t), dim=-1)         # (B, N*P)
        w = mask.to(cos.dtype)
        count = w.sum(1)                                                # (B,)
        per_sample = (cos * w).sum(1) / count.clamp(min=1)              # (B,)
        has = (count > 0).to(cos.dtype)
        return -(per_sample * has).sum() / has.sum().clamp(min=1)



# ----------------------------------------------------------------------------------------------
# student and teacher, and the objective of one batch

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
    """Student and teacher (SPEC §6): the teacher starts as an exact copy and takes no gradients."""
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


def _gather(z):
    """(m, ...) on this process -> (world·m, ...) global batch. Differentiable: the backward sums the
    gradients of every process's (identical) global loss, DDP then averages -> single-process result."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z
    with warnings.catch_warnings():  # deprecated in favour of a private API; the public one is kept on purpose
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(torch.distributed.nn.functional.all_gather(z))


def compute_losses(student, teacher, x1, x2, mask, ttr_w, tok_w=0.5, eps=0.05, precision="fp32", masked=None,
                   cls_w=1.0):
    """The training objective for one batch (SPEC §7).

    x1, x2: (B, C, T') the two views; mask: (2B, N, P) bool for the concatenated views, or None.
    masked: is this a masked batch (L_Tok on the masked tokens)? Default: a mask is given. Under DDP an
    unmasked batch passes an all-False mask with masked=False: the student still takes the mask (so
    the mask embedding stays in DDP's graph), but no token is projected and L_Tok is 0. precision: "fp32"
    or "bf16", the forwards' autocast on x's device (runtime.resolve_precision resolves "auto").
    cls_w: the weight of L_CLS; 0 (train.py --cls-weight 0, the ablation) leaves it out of the graph: it is
    still computed for the log, without gradient. A batch with no other term (unmasked, after L_TTR's
    window) then gets a zero loss that is attached to the student (zero gradients, AdamW's momentum and
    decay still act), so that every forward has its backward, as DDP needs.
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

    with torch.set_grad_enabled(torch.is_grad_enabled() and cls_w > 0):
        cls, comp, expa = mcr_loss(views(s["z_cls"]), views(t["z_cls"]), eps)
    ttr = ttr_loss(views(s["z_net"]), views(t["z_net"]), eps)[0] if ttr_w > 0 else cls.new_zeros(())
    tok = token_loss(s["z_tok"], t["z_tok"], mask) if masked else cls.new_zeros(())
    loss = (cls_w * cls if cls_w > 0 else 0 * s["z_cls"].sum()) + ttr_w * ttr + tok_w * tok
    with torch.no_grad():
        tc = F.normalize(t["cls"].float(), dim=-1)             # (2B, D)
        n = tc.shape[0]
        cos_t = ((tc @ tc.T).sum() - n) / (n * (n - 1))
    return {"loss": loss, "cls": cls, "ttr": ttr, "tok": tok, "comp": comp, "expa": expa,
            "std_s": s["z_cls"].detach().std(0).mean(), "std_t": t["z_cls"].std(0).mean(), "cos_t": cos_t}

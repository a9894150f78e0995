"""Projection head and the SimDINO-style self-distillation losses of Brain-Semantoks (SPEC §6-7).

No softmax, centring or temperature: the student is pulled towards the teacher by a cosine
(compression) while a coding-rate term keeps the batch of projections spread out (expansion).

    R_eps(Z)  = 1/2 logdet(I_p + p/(m eps) Z^T Z)                    Z (m, p), eps = 0.05
    comp      = 1/2 [mean_b cos(t1_b, s2_b) + mean_b cos(t2_b, s1_b)]   (cross-view pairs)
    expa      = gamma * 1/2 sum_v R_eps((s_v + t_v) / 2),   gamma = (p + m) / (p m)
    L_MCR     = -comp - expa

L_CLS = L_MCR on projected CLS tokens; L_TTR = L_MCR on projected per-network token means;
L_Tok = -cos(head(teacher token), head(student token)) at masked positions. Teacher inputs are
detached here, so callers may pass teacher outputs that still carry a graph. Under DDP the caller
gathers projections across ranks first: m is always the number of rows given.

    python -m pytest -q tests/test_losses.py
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels
import runtime


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

"""The MCR loss (SPEC §7) with its batch reduction in Triton.

Math. Student views s_1, s_2 and teacher views t_1, t_2 are (m, p) with rows paired. With
Z_v = (s_v + t_v) / 2, c = p / (m·ε), γ = (p + m) / (p·m) and M_v = I_p + c·Z_vᵀZ_v:

    comp = ½ [ (1/m) Σ_b cos(t1_b, s2_b) + (1/m) Σ_b cos(t2_b, s1_b) ]
    expa = γ · ½ · Σ_v ½ logdet(M_v)
    loss = −comp − expa

where cos(a, b) = Σ a·b / (max(|a|, δ) · max(|b|, δ)), δ = 1e-8 (exactly F.cosine_similarity).

Everything that touches all m rows happens in one pass over the batch: the two Gram matrices
Z_vᵀZ_v and the two cosine sums (`_mcr_stats_kernel`). The p×p part is tiny and left to PyTorch
(on the same device, without a host sync): M_v = L_v L_vᵀ (Cholesky), ½ logdet M_v = Σ log diag L_v.

Backward (teacher gets no gradient). With a_comp, a_expa the upstream weights of comp and expa
(loss contributes −1 to each):

    ∂(½ logdet M_v)/∂Z_v = c · Z_v M_v⁻¹,   ∂Z_v/∂s_v = ½   ⇒   ∂expa/∂s_v = γ·c/4 · Z_v M_v⁻¹
    ∂cos(a, b)/∂b = a / (|a|'|b|') − cos(a, b) · b / (|b|'·|b|)      (|·|' = max(|·|, δ))
    ∂comp/∂s_2 = 1/(2m) · ∂cos(t1, s2)/∂s2,   ∂comp/∂s_1 = 1/(2m) · ∂cos(t2, s1)/∂s1

M_v⁻¹ comes from the saved Cholesky factor (cholesky_inverse); `_mcr_grad_kernel` forms
a_expa·γc/4·Z_v M_v⁻¹ + a_comp/(2m)·∂cos for a tile of rows of one view.

Run the parity tests with `python -m pytest -q tests/test_kernels.py` (CPU interpreter).
"""
import dataclasses

import torch
import triton
import triton.language as tl

from .checks import check_views

_COS_EPS = 1e-8   # F.cosine_similarity's default eps


@triton.jit
def _cos_sums(s1_ptr, t1_ptr, s2_ptr, t2_ptr, row_lo, row_hi, p, cos_eps,
              BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr):
    """Σ cos(t1, s2) and Σ cos(t2, s1) over rows row_lo..row_hi-1, BLOCK_P columns at a time."""
    mm = tl.arange(0, BLOCK_M)
    cos12 = tl.zeros((BLOCK_M,), dtype=tl.float32)
    cos21 = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for r0 in range(row_lo, row_hi, BLOCK_M):
        rows = r0 + mm
        r_ok = rows < row_hi
        d12 = tl.zeros((BLOCK_M,), dtype=tl.float32)   # <t1, s2>
        d21 = tl.zeros((BLOCK_M,), dtype=tl.float32)   # <t2, s1>
        q_s1 = tl.zeros((BLOCK_M,), dtype=tl.float32)  # squared norms
        q_t1 = tl.zeros((BLOCK_M,), dtype=tl.float32)
        q_s2 = tl.zeros((BLOCK_M,), dtype=tl.float32)
        q_t2 = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for c0 in range(0, p, BLOCK_P):
            cols = c0 + tl.arange(0, BLOCK_P)
            off = rows[:, None] * p + cols[None, :]              # (BLOCK_M, BLOCK_P)
            ok = r_ok[:, None] & (cols < p)[None, :]
            s1 = tl.load(s1_ptr + off, mask=ok, other=0.0).to(tl.float32)
            t1 = tl.load(t1_ptr + off, mask=ok, other=0.0).to(tl.float32)
            s2 = tl.load(s2_ptr + off, mask=ok, other=0.0).to(tl.float32)
            t2 = tl.load(t2_ptr + off, mask=ok, other=0.0).to(tl.float32)
            d12 += tl.sum(t1 * s2, axis=1)
            d21 += tl.sum(t2 * s1, axis=1)
            q_s1 += tl.sum(s1 * s1, axis=1)
            q_t1 += tl.sum(t1 * t1, axis=1)
            q_s2 += tl.sum(s2 * s2, axis=1)
            q_t2 += tl.sum(t2 * t2, axis=1)
        # F.cosine_similarity: each norm clamped to eps separately
        cos12 += tl.where(r_ok, d12 / (tl.maximum(tl.sqrt(q_t1), cos_eps) * tl.maximum(tl.sqrt(q_s2), cos_eps)), 0.0)
        cos21 += tl.where(r_ok, d21 / (tl.maximum(tl.sqrt(q_t2), cos_eps) * tl.maximum(tl.sqrt(q_s1), cos_eps)), 0.0)
    return tl.sum(cos12, axis=0), tl.sum(cos21, axis=0)


@triton.jit
def _mcr_stats_kernel(
    s1_ptr, t1_ptr, s2_ptr, t2_ptr,   # (m, p) each, contiguous
    gram_ptr,                         # (n_splits, 2, p, p) fp32 out: per-split Z_vᵀZ_v
    cos_ptr,                          # (n_splits, 2) fp32 out: per-split Σ cos(t1, s2), Σ cos(t2, s1)
    m, p, rows_per_split, n_tiles, cos_eps,
    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_s, pid_t = tl.program_id(0), tl.program_id(1)
    ci = (pid_t // n_tiles) * BLOCK_P + tl.arange(0, BLOCK_P)        # Gram rows of this tile
    cj = (pid_t % n_tiles) * BLOCK_P + tl.arange(0, BLOCK_P)         # Gram columns of this tile
    ci_ok, cj_ok = ci < p, cj < p
    row_lo = pid_s * rows_per_split
    row_hi = tl.minimum(row_lo + rows_per_split, m)
    acc1 = tl.zeros((BLOCK_P, BLOCK_P), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_P, BLOCK_P), dtype=tl.float32)
    mm = tl.arange(0, BLOCK_M)
    for r0 in range(row_lo, row_hi, BLOCK_M):
        rows = r0 + mm
        r_ok = rows < row_hi
        offT = rows[None, :] * p + ci[:, None]                       # (BLOCK_P, BLOCK_M): Z[:, ci]ᵀ
        okT = ci_ok[:, None] & r_ok[None, :]
        off = rows[:, None] * p + cj[None, :]                        # (BLOCK_M, BLOCK_P): Z[:, cj]
        ok = r_ok[:, None] & cj_ok[None, :]
        z1T = (tl.load(s1_ptr + offT, mask=okT, other=0.0).to(tl.float32)
               + tl.load(t1_ptr + offT, mask=okT, other=0.0).to(tl.float32)) * 0.5
        z1 = (tl.load(s1_ptr + off, mask=ok, other=0.0).to(tl.float32)
              + tl.load(t1_ptr + off, mask=ok, other=0.0).to(tl.float32)) * 0.5
        acc1 = tl.dot(z1T, z1, acc1, input_precision=PRECISION)
        z2T = (tl.load(s2_ptr + offT, mask=okT, other=0.0).to(tl.float32)
               + tl.load(t2_ptr + offT, mask=okT, other=0.0).to(tl.float32)) * 0.5
        z2 = (tl.load(s2_ptr + off, mask=ok, other=0.0).to(tl.float32)
              + tl.load(t2_ptr + off, mask=ok, other=0.0).to(tl.float32)) * 0.5
        acc2 = tl.dot(z2T, z2, acc2, input_precision=PRECISION)
    out = ci[:, None] * p + cj[None, :]
    out_ok = ci_ok[:, None] & cj_ok[None, :]
    tl.store(gram_ptr + (pid_s * 2 + 0) * p * p + out, acc1, mask=out_ok)
    tl.store(gram_ptr + (pid_s * 2 + 1) * p * p + out, acc2, mask=out_ok)

    if pid_t == 0:   # the cosines need whole rows: one program per split does them
        cos12, cos21 = _cos_sums(s1_ptr, t1_ptr, s2_ptr, t2_ptr, row_lo, row_hi, p, cos_eps, BLOCK_M, BLOCK_P)
        tl.store(cos_ptr + pid_s * 2 + 0, cos12)
        tl.store(cos_ptr + pid_s * 2 + 1, cos21)


@triton.jit
def _mcr_grad_kernel(
    s_ptr, t_ptr,     # (m, p) this view's student and teacher: Z = (s + t) / 2
    tu_ptr,           # (m, p) the other view's teacher, paired with s in the cosine
    minv_ptr,         # (p, p) fp32 M⁻¹ of this view
    gs_ptr,           # (m, p) out: gradient w.r.t. s, in s's dtype
    w_ptr,            # (2,) fp32: a_expa·γ·c/4, a_comp/(2m) (on the device: no host sync)
    m, p, cos_eps,
    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, PRECISION: tl.constexpr,
):
    w_expa, w_cos = tl.load(w_ptr), tl.load(w_ptr + 1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    r_ok = rows < m
    pp = tl.arange(0, BLOCK_P)
    # row statistics of the cosine, BLOCK_P columns at a time
    d_ts = tl.zeros((BLOCK_M,), dtype=tl.float32)
    q_s = tl.zeros((BLOCK_M,), dtype=tl.float32)
    q_t = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for c0 in range(0, p, BLOCK_P):
        off = rows[:, None] * p + (c0 + pp)[None, :]                 # (BLOCK_M, BLOCK_P)
        ok = r_ok[:, None] & (c0 + pp < p)[None, :]
        s = tl.load(s_ptr + off, mask=ok, other=0.0).to(tl.float32)
        tu = tl.load(tu_ptr + off, mask=ok, other=0.0).to(tl.float32)
        d_ts += tl.sum(tu * s, axis=1)
        q_s += tl.sum(s * s, axis=1)
        q_t += tl.sum(tu * tu, axis=1)
    ns = tl.sqrt(q_s)
    ns_c = tl.maximum(ns, cos_eps)
    inv_norms = 1.0 / (tl.maximum(tl.sqrt(q_t), cos_eps) * ns_c)
    # |s| = 0 only for an all-zero row, where PyTorch's norm gradient is 0 as well
    s_coef = tl.where(ns > 0, d_ts * inv_norms / (ns_c * tl.where(ns > 0, ns, 1.0)), 0.0)
    for j0 in range(0, p, BLOCK_P):                                  # output columns
        cj = j0 + pp
        cj_ok = cj < p
        zm = tl.zeros((BLOCK_M, BLOCK_P), dtype=tl.float32)          # (Z M⁻¹)[:, cj]
        for k0 in range(0, p, BLOCK_P):
            ck = k0 + pp
            ck_ok = ck < p
            off = rows[:, None] * p + ck[None, :]
            ok = r_ok[:, None] & ck_ok[None, :]
            z = (tl.load(s_ptr + off, mask=ok, other=0.0).to(tl.float32)
                 + tl.load(t_ptr + off, mask=ok, other=0.0).to(tl.float32)) * 0.5
            minv = tl.load(minv_ptr + ck[:, None] * p + cj[None, :], mask=ck_ok[:, None] & cj_ok[None, :], other=0.0)
            zm = tl.dot(z, minv, zm, input_precision=PRECISION)
        off = rows[:, None] * p + cj[None, :]
        ok = r_ok[:, None] & cj_ok[None, :]
        s = tl.load(s_ptr + off, mask=ok, other=0.0).to(tl.float32)
        tu = tl.load(tu_ptr + off, mask=ok, other=0.0).to(tl.float32)
        dcos = tu * inv_norms[:, None] - s_coef[:, None] * s         # ∂cos(tu, s)/∂s
        tl.store(gs_ptr + off, (w_expa * zm + w_cos * dcos).to(gs_ptr.dtype.element_ty), mask=ok)


@dataclasses.dataclass(frozen=True)
class McrBlocks:
    """Tiling of the batch reduction. GPU defaults: 64×64 Gram tiles, 256 rows per program (18
    splits × 4 tiles = 72 programs at m = 4608, p = 128); grad: 32 rows per program, p in 64-column
    steps. 8 warps: with 4, ptxas (sm_90) reports register spills at these tiles."""
    rows: int = 32             # BLOCK_M: rows per step
    p: int = 64                # BLOCK_P: Gram tile edge
    rows_per_split: int = 256  # rows reduced by one program (PyTorch sums the partials, on the device)
    num_warps: int = 8


def default_blocks(s: torch.Tensor) -> McrBlocks:
    """GPU defaults on CUDA; one program with the whole batch under the CPU interpreter."""
    if s.is_cuda:
        return McrBlocks()
    m, p = s.shape
    p2 = max(16, triton.next_power_of_2(p))
    return McrBlocks(rows=max(16, min(256, triton.next_power_of_2(m))), p=p2, rows_per_split=m)


def _precision(t: torch.Tensor) -> str:
    """fp32 everywhere; on CUDA follow PyTorch's own matmul setting so kernel and reference agree."""
    return "tf32" if t.is_cuda and torch.backends.cuda.matmul.allow_tf32 else "ieee"


class McrLoss(torch.autograd.Function):
    """(s1, s2, t1, t2) -> (loss, comp, expa); gradients for the student views only."""

    @staticmethod
    def forward(ctx, s1, s2, t1, t2, eps, blocks):
        m, p = s1.shape
        bl = blocks or default_blocks(s1)
        p_pow2 = max(16, triton.next_power_of_2(p))
        bp = min(bl.p, p_pow2)
        n_tiles = triton.cdiv(p, bp)
        n_splits = triton.cdiv(m, bl.rows_per_split)
        gram = torch.empty(n_splits, 2, p, p, device=s1.device, dtype=torch.float32)
        cos = torch.empty(n_splits, 2, device=s1.device, dtype=torch.float32)
        _mcr_stats_kernel[(n_splits, n_tiles * n_tiles)](
            s1, t1, s2, t2, gram, cos, m, p, bl.rows_per_split, n_tiles, _COS_EPS,
            BLOCK_M=bl.rows, BLOCK_P=bp, PRECISION=_precision(s1), num_warps=bl.num_warps)
        c = p / (m * eps)
        gamma = (p + m) / (p * m)
        eye = torch.eye(p, device=s1.device, dtype=torch.float32)
        # I + c·Gram is positive definite, so skip cholesky's error check: reading its info is a host sync
        chol = torch.linalg.cholesky_ex(eye + c * gram.sum(0))[0]                  # (2, p, p)
        rates = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)           # ½ logdet M_v
        comp = cos.sum(0).sum() / (2 * m)
        expa = gamma * 0.5 * rates.sum()
        ctx.save_for_backward(s1, s2, t1, t2, chol)
        ctx.meta = (c, gamma, bl, bp)
        dtype = torch.promote_types(s1.dtype, torch.float32)    # as the reference: fp32 at least
        return (-comp - expa).to(dtype), comp.to(dtype), expa.to(dtype)

    @staticmethod
    def backward(ctx, g_loss, g_comp, g_expa):
        s1, s2, t1, t2, chol = ctx.saved_tensors
        c, gamma, bl, bp = ctx.meta
        m, p = s1.shape
        weights = torch.stack([(g_expa - g_loss) * (gamma * c / 4),
                               (g_comp - g_loss) / (2 * m)]).float().contiguous()   # (2,)
        minv = torch.cholesky_inverse(chol)                                         # (2, p, p)
        grads = []
        for v, (s, t, tu) in enumerate(((s1, t1, t2), (s2, t2, t1))):
            gs = torch.empty_like(s)
            _mcr_grad_kernel[(triton.cdiv(m, bl.rows),)](
                s, t, tu, minv[v].contiguous(), gs, weights, m, p, _COS_EPS,
                BLOCK_M=bl.rows, BLOCK_P=bp, PRECISION=_precision(s), num_warps=bl.num_warps)
            grads.append(gs)
        return grads[0], grads[1], None, None, None, None


def mcr_loss_triton(student_views, teacher_views, eps: float = 0.05, *, blocks: McrBlocks = None):
    """Same signature and results as `losses.mcr_loss_reference`: views are 2-tuples of (m, p);
    returns (loss, comp, expa) scalars; the teacher views get no gradient."""
    check_views(student_views, teacher_views)
    s1, s2 = (v.contiguous() for v in student_views)
    t1, t2 = (v.detach().contiguous() for v in teacher_views)
    with torch.autocast(s1.device.type, enabled=False):     # statistics are fp32 whatever autocast says
        return McrLoss.apply(s1, s2, t1, t2, float(eps), blocks)

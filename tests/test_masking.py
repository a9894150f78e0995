"""Slice masking follows the SPEC §4 distribution exactly (checked over 20,000 draws)."""
import pytest
import torch

from masking import slice_mask


def _split(mask):
    """-> is_row, is_col (B,) (mask constant over patches / over networks), the rows, the columns."""
    is_row = (mask == mask[:, :, :1]).all(2).all(1)
    is_col = (mask == mask[:, :1, :]).all(1).all(1)
    return is_row, is_col, mask[:, :, 0], mask[:, 0, :]


def test_distribution_n9_p5():
    B, N, P = 20_000, 9, 5
    mask = slice_mask(B, N, P, generator=torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and mask.shape == (B, N, P)
    count = mask.sum((1, 2))
    assert (count > 0).all() and (count < N * P).all()                      # never empty, never all
    is_row, is_col, rows, cols = _split(mask)
    assert (is_row ^ is_col).all()                                          # every mask is exactly one type
    assert abs(is_row.float().mean() - 0.5) < 0.02

    k = rows[is_row].sum(1)                                                 # k uniform in {5, 6}
    assert set(k.unique().tolist()) == {5, 6}
    assert abs((k == 5).float().mean() - 0.5) < 0.02
    per_net = rows[is_row].float().mean(0)                                  # each network equally likely
    assert (per_net - 5.5 / 9).abs().max() < 0.03

    c = cols[~is_row]
    width = c.sum(1)                                                        # ceil(rP) - 1, r ~ U(.65, .85)
    assert set(width.unique().tolist()) == {3, 4}
    assert abs((width == 3).float().mean() - 0.75) < 0.02                  # r <= 0.8 has prob 0.75
    start = c.float().argmax(1)
    t = torch.arange(P)
    assert (c == ((t >= start[:, None]) & (t < (start + width)[:, None]))).all()           # contiguous
    for w, n_starts in ((3, 3), (4, 2)):                                    # start uniform over valid starts
        freq = torch.bincount(start[width == w].long(), minlength=n_starts).float() / (width == w).sum()
        assert freq.numel() == n_starts and (freq - 1 / n_starts).abs().max() < 0.04, (w, freq)


@pytest.mark.parametrize("N, P, ks, widths", [
    (4, 5, {2}, {3, 4}),            # floor(2.6)=2 .. floor(3.4)-1=2
    (17, 5, {11, 12, 13}, {3, 4}),
    (2, 2, {1}, {1}),               # clamped: never 0, never everything
    (9, 10, {5, 6}, {6, 7, 8}),     # r*10 in (6.5, 8.5) -> ceil - 1 in {6, 7, 8}
])
def test_counts_other_grids(N, P, ks, widths):
    mask = slice_mask(4000, N, P, generator=torch.Generator().manual_seed(1))
    is_row, is_col, rows, cols = _split(mask)
    assert (is_row ^ is_col).all()
    assert set(rows[is_row].sum(1).unique().tolist()) == ks
    assert set(cols[~is_row].sum(1).unique().tolist()) == widths
    count = mask.sum((1, 2))
    assert (count > 0).all() and (count < N * P).all()


def test_degenerate_grids_use_the_possible_type():
    m = slice_mask(500, 1, 5, generator=torch.Generator().manual_seed(0))   # one network: columns only
    assert set(m.sum((1, 2)).unique().tolist()) <= {3, 4}
    m = slice_mask(500, 6, 1, generator=torch.Generator().manual_seed(0))   # one patch: rows only
    assert set(m.sum((1, 2)).unique().tolist()) <= {3, 4}


def test_generator_and_device():
    a = slice_mask(64, 9, 5, generator=torch.Generator().manual_seed(3))
    b = slice_mask(64, 9, 5, generator=torch.Generator().manual_seed(3), device="cpu")
    assert torch.equal(a, b) and a.device.type == "cpu"
    if torch.cuda.is_available():
        c = slice_mask(64, 9, 5, generator=torch.Generator().manual_seed(3), device="cuda")
        assert c.is_cuda and torch.equal(c.cpu(), a)
        assert slice_mask(64, 9, 5, device="cuda").is_cuda


def test_bad_arguments():
    with pytest.raises(ValueError, match="mask ratio"):
        slice_mask(2, 9, 5, ratio=(0.9, 0.5))
    with pytest.raises(ValueError, match="1 x 1 token grid"):
        slice_mask(2, 1, 1)

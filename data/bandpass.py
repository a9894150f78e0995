"""Band-pass filtering of ROI time series on the 2.0 s grid, as the release expects (SPEC §1).

The authors filter every ROI 0.01-0.1 Hz before z-scoring (their README; example.ipynb's
`bandpass_filter`: Butterworth order 5, fs 0.5 Hz, scipy.signal.filtfilt forward and backward).
`--bandpass LOW HIGH` does the same here, on each scan's valid length, after resampling to 2.0 s
and before z-scoring: the filter in second-order sections (`scipy.signal.sosfiltfilt`; the same
filter as their (b, a) form, numerically sounder), zero-phase.

- `check_band(low, high)`: the band, checked against the 0.25 Hz Nyquist frequency of the grid.
- `bandpass_matrix(n, low, high)`: the filter of a scan of n points as one (n, n) matrix: sosfiltfilt
  is linear in its input (odd-extension padding and initial conditions included), so filtering
  every ROI of every scan of length n is one matrix product, exactly sosfiltfilt up to rounding.
- `bandpass_array(data, lengths, low, high)`: every scan of (S, C, T) data into RAM, filtered.

    python -m data.bandpass 0.01 0.1     # the filter's gain at a few frequencies
"""
import sys
from functools import lru_cache

import numpy as np
from scipy import signal

from data.scans import TR, equal_length_chunks

ORDER = 5                    # example.ipynb: bandpass_filter(..., order=5)
NYQUIST = 0.5 / TR           # 0.25 Hz on the 2.0 s grid
DIRECT_ABOVE = 4096          # longer scans: sosfiltfilt itself (an (n, n) matrix would be too large)


def check_band(low, high):
    low, high = float(low), float(high)
    if not (0 < low < high < NYQUIST):
        raise ValueError(f"--bandpass {low:g} {high:g}: need 0 < LOW < HIGH < {NYQUIST:g} Hz (the Nyquist frequency "
                         f"of the 2.0 s grid the data are filtered on); the release expects 0.01 0.1")
    return low, high


def _sos(low, high):
    return signal.butter(ORDER, [low, high], btype="band", fs=1 / TR, output="sos")


def min_length(low, high):
    """The shortest scan sosfiltfilt filters: longer than its default odd-extension pad, 3·(2·sections + 1 − ...)."""
    sos = _sos(low, high)
    return 3 * (2 * len(sos) + 1 - min((sos[:, 2] == 0).sum(), (sos[:, 5] == 0).sum())) + 1


@lru_cache(maxsize=32)
def bandpass_matrix(n, low, high):
    """(n, n) float64 F with x @ F = sosfiltfilt(sos, x, axis=-1) for x (..., n): the filter applied
    to the identity (row i of F is the response to the unit impulse at time i)."""
    return signal.sosfiltfilt(_sos(low, high), np.eye(n), axis=-1)


def filter_scans(x, low, high):
    """x (..., n) -> zero-phase band-passed (..., n) float64."""
    n = x.shape[-1]
    if n > DIRECT_ABOVE:
        return signal.sosfiltfilt(_sos(low, high), np.asarray(x, dtype=np.float64), axis=-1)
    return np.asarray(x, dtype=np.float64) @ bandpass_matrix(n, low, high)


def bandpass_array(data, lengths, low, high, names=None):
    """Every scan of (S, C, T) data (NaN-padded, all-NaN ROIs allowed) -> (S, C, T) in RAM, in the data's
    dtype, each filtered over its valid length; padding and uncovered ROIs stay NaN. Scans of equal
    length go through one matrix product. names: the scans' file names, for the error on a short scan."""
    low, high = check_band(low, high)
    shortest = min_length(low, high)
    short = np.flatnonzero(lengths < shortest)
    if len(short):
        j = short[0]
        raise ValueError(f"{names[j] if names else f'scan {j}'} has {lengths[j]} valid time points; --bandpass "
                         f"{low:g} {high:g} needs at least {shortest} on the 2.0 s grid to filter it"
                         + (f" ({len(short)} such scans)" if len(short) > 1 else ""))
    S, C, T = data.shape
    out = np.full((S, C, T), np.nan, dtype=data.dtype)
    for idx, n in equal_length_chunks(lengths, C, f"band-pass {low:g}-{high:g} Hz"):
        x = np.asarray(data[idx], dtype=np.float64)[:, :, :n]              # (b, C, n)
        uncovered = np.isnan(x).all(-1)                                     # (b, C): no coverage, stays NaN
        y = filter_scans(np.nan_to_num(x), low, high)
        y[uncovered] = np.nan
        out[idx, :, :n] = y
    return out


if __name__ == "__main__":
    lo, hi = (float(v) for v in sys.argv[1:3]) if len(sys.argv) > 2 else (0.01, 0.1)
    lo, hi = check_band(lo, hi)
    f, h = signal.sosfreqz(_sos(lo, hi), worN=[0.005, lo, 0.05, hi, 0.2], fs=1 / TR)
    print(f"Butterworth order {ORDER}, {lo:g}-{hi:g} Hz, forward and backward (gain squared):")
    for fi, hi_ in zip(f, np.abs(h) ** 2):
        print(f"  {fi:.3f} Hz: {hi_:.3f}")
    print(f"shortest scan it filters: {min_length(lo, hi)} points")

"""Which atlases a dataset holds, and where their ROIs sit in the model's 457 (SPEC §2).

The released model reads Schaefer-400 (7-network order) + Tian S3 + Buckner 7, concatenated in that
order. The authors' README lets users who lack the subcortical or cerebellar parcellation run it
anyway "by masking their tokens (post-tokenizer)": the absent atlases' networks get the mask
embedding in every patch (Encoder.features(x, masked_networks)). Here:

- `parse_atlases("schaefer400,tian3")`: the --atlases option of an array or folder -> names, checked.
- `fill_absent(scans, present)`: Scans of the present atlases' ROIs -> Scans of all 457, the absent
  ROIs read as zeros (their values never reach the model: their networks are masked), with
  `scans.absent_rois` saying which.
- `masked_networks(network_map, absent_rois)`: the networks to mask; an error when an absent ROI
  shares a network with a present one (a map where the missing ROIs are not whole networks).

An .h5 in the authors' layout says itself which atlases it holds (h5.py); load.py calls fill_absent.

    python -c "from data.atlases import ATLASES; print(ATLASES)"
"""
from dataclasses import replace

import numpy as np

ATLASES = {"schaefer400": 400, "tian3": 50, "buckner7": 7}   # name -> ROIs, in concatenation order (SPEC §2)
ALL = tuple(ATLASES)


def roi_ranges():
    """{atlas: (first ROI, end)} in the 457-ROI concatenation."""
    edges = np.cumsum([0] + list(ATLASES.values()))
    return {a: (int(edges[i]), int(edges[i + 1])) for i, a in enumerate(ATLASES)}


def parse_atlases(text):
    """'schaefer400,tian3' -> ("schaefer400", "tian3") in concatenation order; None -> None (all)."""
    if text is None:
        return None
    names = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    bad = [n for n in names if n not in ATLASES]
    if bad or not names:
        raise ValueError(f"--atlases {text!r}: name one or more of {', '.join(ALL)}, comma-separated "
                         f"(the atlases the data hold, in any order)" + (f"; unknown: {', '.join(bad)}" if bad else ""))
    if len(set(names)) != len(names):
        raise ValueError(f"--atlases {text!r} names an atlas twice")
    return tuple(a for a in ALL if a in names)


def describe(present):
    """'schaefer400 400 + tian3 50' for messages."""
    return " + ".join(f"{a} {ATLASES[a]}" for a in present)


def check_present_rois(n_rois, present, where):
    """The data's ROI count must be the present atlases' sum (they are placed by position)."""
    expected = sum(ATLASES[a] for a in present)
    if n_rois != expected:
        raise ValueError(f"{where}: the data have {n_rois} ROIs but --atlases {','.join(present)} holds "
                         f"{expected} ({describe(present)}), concatenated in that order")


class FilledArray:
    """(S, C_present, T) data as the (S, 457, T) array the model reads, absent atlases' ROIs zero.

    Serves what Scans.data serves (`.shape`, `.dtype`, `len()`, indexing by scan rows) and reads
    only the rows asked for from the data it wraps (a memmap, an in-RAM array or an h5.H5Array)."""

    def __init__(self, data, present_rois, n_rois):
        self.data, self.present_rois = data, np.asarray(present_rois)
        S, _, T = data.shape
        self.shape, self.dtype = (S, n_rois, T), data.dtype

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        rows, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        part = np.asarray(self.data[rows])                                    # (n, C_present, T) or (C_present, T)
        out = np.zeros(part.shape[:-2] + self.shape[1:], dtype=self.dtype)    # (n, 457, T)
        out[..., self.present_rois, :] = part
        return out[(Ellipsis,) + rest] if rest else out


def fill_absent(scans, present):
    """Scans holding only the atlases `present` -> Scans of all ATLASES' ROIs (absent ones zero),
    with `absent_rois` (indices) and `atlases` set. All atlases present: scans unchanged."""
    ranges = roi_ranges()
    scans.atlases = tuple(present)
    if tuple(present) == ALL:
        return scans
    present_rois = np.concatenate([np.arange(*ranges[a]) for a in present])
    absent = np.concatenate([np.arange(*ranges[a]) for a in ALL if a not in present])
    n = sum(ATLASES.values())
    return replace(scans, data=FilledArray(scans.data, present_rois, n), absent_rois=absent, atlases=tuple(present),
                   key=f"{scans.key}|atlases={','.join(present)}")


def masked_networks(network_map, absent_rois, names=None):
    """The ids of the networks made up of the absent ROIs only (sorted), or None when none is absent.
    Raises when a network holds both absent and present ROIs: its token cannot be masked whole."""
    if absent_rois is None or len(absent_rois) == 0:
        return None
    m = np.asarray(network_map)
    absent = np.zeros(len(m), dtype=bool)
    absent[np.asarray(absent_rois)] = True
    hit = np.unique(m[absent])
    split = [int(n) for n in hit if (~absent[m == n]).any()]
    if split:
        label = lambda n: names[n] if names is not None else f"network {n}"  # noqa: E731
        parts = [f"{label(n)} ({int((absent & (m == n)).sum())} of {int((m == n).sum())} ROIs absent)" for n in split]
        raise ValueError(f"the absent atlases' ROIs are not whole networks of the model's map: {'; '.join(parts)}. "
                         f"Only whole networks can be masked; the map must give the absent ROIs networks of their own")
    return [int(n) for n in hit]

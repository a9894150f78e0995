"""The built-in synthetic cohort (v3): simulated subjects whose labels act through named mechanisms.

Used when `train.py` / `probe.py` get no `--data`, and by the tests. It is written in the file
formats a user brings (SPEC §1: an (S, C, T) `.npy` of ROI series on the 2.0 s grid, NaN-padded;
subject ids beside it; a labels CSV for probe.py, SPEC §9) over the default 457-ROI, 9-network
layout (SPEC §2). It is a measuring instrument, not real fMRI: every label says which mechanism
carries it, so the probe table tells what a frozen encoder captures and what it misses.

    python -m data.synthetic     # write (or reuse) ./synthetic/ and describe the cohort and its labels

Generative model (TR 2.0 s), per scan s of subject i:

  network latents   z_t = A_s z_{t-1} + e_t over the N networks (VAR(1), e ~ N(0, I)),
                    A_s = g_i · (0.5·I + K_pop + F_i + Σ_l b·y_l·E_l) + session noise;
  sub-sources       J-1 = 2 per network (its sub-systems), independent AR(1) with coefficient φ_{i,n};
  private source    one white source per network, shared by its ROIs with variance share ρ_{i,n} of
                    what would otherwise be ROI noise (ROI variance and spectrum stay the same);
  ROI series        loadings × (its network's latent, its network's sub-sources) + private source
                    + own white noise; HRF-convolved; a random DC offset per ROI and scale per scan.

  K_pop is a shared symmetric between-network coupling matrix, F_i a subject-stable coupling
  fingerprint (std 0.04); loadings are a population map plus a subject-stable deviation (std
  `topography` on the sub-source loadings, 0.3·topography on the latent): the individual
  within-network topography of cohort v2, unchanged (a subject's scans are alike in what one
  network's ROIs do together). ROI-level SNR ≈ 0.5. A VAR whose spectral radius exceeds 0.95 is
  scaled back to 0.95. Scan lengths are uniform in `length_range`, NaN-padded to the longest.

Mechanisms (y coded ±½ for binary labels and (age − 50)/34.6 for age, the same spread; the sizes
are make_synthetic_cohort's effect_* arguments):

  within     ρ_{i,n} = 0.15 + effect_within·y: how strongly the ROIs of network n share a
             network-private signal. Changes within-network FC of n; between-network FC, every ROI's
             variance and spectrum are unchanged (the shared part is taken from ROI noise).
  between    b = effect_between on two VAR couplings E_l (as in cohort v2): how network a drives b.
             Changes between-network FC of those pairs (and, slightly, the latents' variances).
  gain       g_i = 1 + effect_gain·y: how strongly the whole network drives itself (every entry of
             the VAR, self-terms included). Raises all FC (within and between) and slows the latents.
  timescale  φ_{i,n} = 0.5 + effect_timescale·y for the sub-sources of network n: its intrinsic
             timescale, i.e. the shape of its ROIs' spectra (larger φ: slower, more low-frequency
             power). The sub-sources are rescaled so that their variance after the HRF is that of
             φ = 0.5: zero-lag correlations, hence FC, are unchanged in expectation. FC cannot see it;
             per-ROI z-scoring leaves it intact, so an encoder that reads dynamics can.

Labels (probe_labels.csv; network ids 0 Vis 1 SomMot 2 DorsAttn 3 SalVentAttn 4 Limbic 5 Cont
6 Default 7 Subcortical 8 Cerebellum; signs are directions of the change for label 1 / older age):

  mech_within     within-network coupling only: Cont (5) and Default (6) up.
  mech_between    between-network coupling only: Cont–Default (5, 6) and SalVentAttn–Subcortical
                  (3, 7), the couplings of cohort v2's sz.
  mech_global     global coupling gain only: up.
  mech_timescale  intrinsic timescale only: Vis (0) and Default (6) slower.
  sz    within Default up; between Cont–Default and SalVentAttn–Subcortical.
  mdd   within Limbic up; timescale Default slower; between Limbic–Default, Limbic–Subcortical.
  asd   timescale Vis and SomMot faster; between SalVentAttn–Default, Vis–SomMot.
  sex   within Default up and SomMot down; between SomMot–DorsAttn, Vis–Default.
  age   (years, uniform 20–80) gain down; within Cont and Default down; between DorsAttn–Cont,
        Default–Cerebellum up (less segregated networks with age).

  A mixture of k mechanisms applies each at 1/√k of its pure size, so that it carries about as much
  signal as a pure label (how much of it a method sees depends on the networks involved: sizes
  are per mechanism, not per network). The directions are illustrative;
  which mechanisms a label mixes is the point. Binary labels are independent Bernoulli(½), age
  uniform 20–80 years, all independent of each other.

Effect sizes were chosen before any encoder was probed on this cohort, from baselines that need no
model, and were not changed after: target a balanced accuracy of about 70 % (65-80 %) on each pure
label with probe.py's protocol (300 probe subjects, 4:1:8 subject splits, 10 repeats). For within,
between and gain the baseline is FC (Fisher-z Pearson, all ROI pairs, probe.py's FC baseline); for
timescale, which FC cannot see, each ROI's autocorrelation at lags 1-3. `python bench/cohort.py`
measures both. Three trial sets of sizes on a probe-only draw, then interpolation to ~70 %; measured
on the default cohort (seed 0; seed 1 in brackets):

  effect_within 0.2      FC 70.9 ± 4.2 % on mech_within   (71.3)
  effect_between 0.12    FC 75.6 ± 3.3 % on mech_between  (74.4); cohort v2's 0.09 gave 65 % here
  effect_gain 0.15       FC 74.1 ± 3.1 % on mech_global   (76.5); autocorrelation 82.4 ± 2.0 %
  effect_timescale 0.25  FC 49.8 ± 1.8 %, autocorrelation 66.4 ± 3.3 % on mech_timescale  (76.6)

The mixtures land between 61 % and 82 % for FC (age: R² 0.22); every number: BENCHMARKS.md.
Defaults take ~8 s on a 2-core CPU (cohort v2: ~9 s) and ~190 MB on disk.
"""
import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np

from data.load import subjects_path
from data.networks import default_network_map
from data.scans import TR
from machine.fileio import atomic_write

SYNTH_VERSION = 3   # bump whenever the generator changes: cached cohorts with another version are rebuilt
MECHANISMS = ("within", "between", "gain", "timescale")
# label -> {mechanism: components}: within/timescale {network: sign}, between {(a, b): sign}, gain sign
DESIGN = {
    "sz": dict(within={6: 1}, between={(5, 6): 1, (3, 7): 1}),
    "mdd": dict(within={4: 1}, timescale={6: 1}, between={(4, 6): 1, (4, 7): 1}),
    "asd": dict(timescale={0: -1, 1: -1}, between={(3, 6): 1, (0, 1): 1}),
    "sex": dict(within={6: 1, 1: -1}, between={(1, 2): 1, (0, 6): 1}),
    "age": dict(gain=-1, within={5: -1, 6: -1}, between={(2, 5): 1, (6, 8): 1}),
    "mech_within": dict(within={5: 1, 6: 1}),
    "mech_between": dict(between={(5, 6): 1, (3, 7): 1}),
    "mech_global": dict(gain=1),
    "mech_timescale": dict(timescale={0: 1, 6: 1}),
}
LABELS = tuple(DESIGN)                          # the columns of probe_labels.csv, in order
CONTINUOUS = ("age",)
WITHIN_BASE, PHI_BASE = 0.15, 0.5               # population private-source share, sub-source AR coefficient


def _hrf(tr=TR, length=32.0):
    """Canonical double-gamma haemodynamic response sampled every `tr` seconds, unit sum."""
    from scipy.stats import gamma
    t = np.arange(0, length, tr)
    h = gamma.pdf(t, 6) - gamma.pdf(t, 16) / 6
    return h / h.sum()


def _hrf_gain(phi, h):
    """Variance of h * u for a unit-variance AR(1) u with coefficient phi (array) -> same shape."""
    k = np.arange(len(h))
    lag = np.abs(k[:, None] - k[None, :])                                     # (K, K)
    return np.einsum("k,...kl,l->...", h, np.asarray(phi)[..., None, None] ** lag, h)


def _effects(N, sizes):
    """Per-label effect arrays over N networks: between (L, N, N), within (L, N), timescale (L, N),
    gain (L,). Components on networks >= N (a custom map with fewer networks) are dropped."""
    L = len(LABELS)
    out = dict(between=np.zeros((L, N, N)), within=np.zeros((L, N)), timescale=np.zeros((L, N)), gain=np.zeros(L))
    for li, label in enumerate(LABELS):
        design = DESIGN[label]
        scale = 1 / np.sqrt(len(design))                                      # mixtures: 1/√k per mechanism
        for mech, comp in design.items():
            size = scale * sizes[mech]
            if mech == "gain":
                out["gain"][li] = size * comp
            elif mech == "between":
                for (a, b), sign in comp.items():
                    if a < N and b < N:
                        out["between"][li, a, b] = out["between"][li, b, a] = size * sign
            else:
                for n, sign in comp.items():
                    if n < N:
                        out[mech][li, n] = size * sign
    return out


def _ar1(rng, phi, T):
    """Unit-variance AR(1) series with per-row coefficients phi (...,) -> (..., T) float32."""
    e = rng.standard_normal(phi.shape + (T,)).astype(np.float32)
    u = np.empty_like(e)
    u[..., 0] = e[..., 0] / np.sqrt(1 - phi ** 2)
    for t in range(1, T):
        u[..., t] = phi * u[..., t - 1] + e[..., t]
    return u / u.std(axis=-1, keepdims=True)


def _simulate(rng, A, lengths, roi_net, loading, noise_std, share, phi):
    """BOLD-like ROI series -> (S, C, Tmax) float32, NaN-padded.

    A (S, N, N) VAR couplings; loading (S, C, J) per scan: column 0 on the network latent, 1.. on
    its sub-sources; share (S, N) of the ROI noise variance that is a network-private source;
    phi (S, N) the sub-sources' AR coefficient. See the module docstring."""
    from scipy.signal import lfilter
    S, N, _ = A.shape
    C, Tmax, burn, J = len(roi_net), int(lengths.max()), 50, loading.shape[-1]
    h = _hrf()
    T = Tmax + burn + len(h)
    z = rng.standard_normal((S, N))
    lat = np.empty((S, N, T), dtype=np.float32)
    for t in range(T):
        z = np.einsum("sij,sj->si", A, z) + rng.standard_normal((S, N))
        lat[:, :, t] = z
    lat /= lat.std(axis=(0, 2), keepdims=True)                               # unit-variance latents
    phi = np.repeat(phi[:, :, None], J - 1, axis=2)                           # (S, N, J-1)
    sub = _ar1(rng, phi, T) * np.sqrt(_hrf_gain(PHI_BASE, h) / _hrf_gain(phi, h))[..., None].astype(np.float32)
    x = loading[:, :, :1] * lat[:, roi_net, :]                               # (S, C, T+)
    x += np.einsum("scj,scjt->sct", loading[:, :, 1:], sub[:, roi_net])
    private = rng.standard_normal((S, N, T), dtype=np.float32)
    w = noise_std * np.sqrt(share[:, roi_net]).astype(np.float32)[:, :, None]           # (S, C, 1)
    x += w * private[:, roi_net]
    x += noise_std * np.sqrt(1 - share[:, roi_net]).astype(np.float32)[:, :, None] * \
        rng.standard_normal(x.shape, dtype=np.float32)
    x = lfilter(h, [1.0], x, axis=-1)[:, :, -Tmax:].astype(np.float32)     # drop burn-in and filter warm-up
    x *= rng.uniform(0.5, 2.0, (S, 1, 1)).astype(np.float32)
    x += rng.normal(0, 5.0, (S, C, 1)).astype(np.float32)
    return np.where(np.arange(Tmax) < lengths[:, None, None], x, np.nan)


def _draw_labels(rng, n):
    """Labels (n, L) as written (0/1, age in years) and coded (±½, standardised age)."""
    y = np.column_stack([rng.uniform(20, 80, n) if l in CONTINUOUS else rng.integers(0, 2, n) for l in LABELS])
    coded = np.column_stack([(y[:, i] - 50) / 34.6 if l in CONTINUOUS else y[:, i] - 0.5
                             for i, l in enumerate(LABELS)])
    return y, coded


def _write_labels(path, subjects, y):
    """probe_labels.csv: subject + one column per label (0/1, age in years with one decimal)."""
    rows = ["subject," + ",".join(LABELS)]
    rows += [f"{s}," + ",".join(f"{v:.1f}" if l in CONTINUOUS else str(int(v)) for l, v in zip(LABELS, r))
             for s, r in zip(subjects, y)]
    _write_text(path, "\n".join(rows) + "\n")


def _stable(A, radius=0.95):
    """Scale back every VAR (S, N, N) whose spectral radius exceeds `radius`."""
    r = np.abs(np.linalg.eigvals(A)).max(-1)
    return A * np.minimum(1.0, radius / r)[:, None, None]


def make_synthetic_cohort(out_dir, n_pretrain_subjects=200, scans_per_subject=2, n_probe=300,
                          length_range=(120, 300), seed=0, network_map=None, effect_within=0.2,
                          effect_between=0.12, effect_gain=0.15, effect_timescale=0.25,
                          noise_std=2.0, sub_sources=2, topography=0.5) -> Path:
    """Write a synthetic cohort (model, labels and effect sizes: the module docstring):

      pretrain.npy (+ pretrain_subjects.txt)  (n_pretrain_subjects·scans_per_subject, C, T) float16
      probe.npy    (+ probe_subjects.txt)     (n_probe, C, T) float16, one scan per subject
      probe_labels.csv                        subject + one column per label in LABELS (probe.npy order)
      network_map.txt                         the network id of every ROI, one per line
      cohort.json                             the parameters (written last: marks a complete cohort)

    Pretraining and probe subjects are disjoint ("preXXXX" vs "probeXXXX") draws from one population
    (pretraining labels are not written). network_map: ROI -> network ids (default: the 457-ROI map);
    a mechanism on a network the map lacks is dropped. Every file is written atomically
    (fileio.atomic_write), so a reader never sees half a file."""
    if network_map is None:
        network_map = default_network_map()
    roi_net = np.asarray(network_map, dtype=np.int64)
    N, C, J = int(roi_net.max()) + 1, len(roi_net), 1 + int(sub_sources)
    out_dir = Path(out_dir)
    (out_dir / "cohort.json").unlink(missing_ok=True)   # the completeness mark goes first, comes back last
    rng = np.random.default_rng(seed)
    pop = dict(roi_net=roi_net, length_range=length_range, noise_std=noise_std,
               eff=_effects(N, dict(within=effect_within, between=effect_between, gain=effect_gain,
                                    timescale=effect_timescale)),
               K_pop=_sym(rng.normal(0, 0.06, (N, N))),
               loading=np.column_stack([rng.uniform(0.6, 1.4, C), rng.normal(0, 0.5, (C, J - 1))]),   # (C, J)
               deviation=topography * np.r_[0.3, np.ones(J - 1)])                                     # (J,)

    x, subj, _ = _simulate_cohort(rng, pop, n_pretrain_subjects, scans_per_subject, "pre")
    _write_scans(out_dir, "pretrain", x, subj)
    x, subj, y = _simulate_cohort(rng, pop, n_probe, 1, "probe")
    _write_scans(out_dir, "probe", x, subj)
    _write_labels(out_dir / "probe_labels.csv", subj, y)
    _write_text(out_dir / "network_map.txt", "\n".join(map(str, roi_net)) + "\n")
    params = dict(version=SYNTH_VERSION, n_pretrain_subjects=n_pretrain_subjects,
                  scans_per_subject=scans_per_subject, n_probe=n_probe, length_range=list(length_range),
                  seed=seed, n_rois=C, n_networks=N, effect_within=effect_within, effect_between=effect_between,
                  effect_gain=effect_gain, effect_timescale=effect_timescale, noise_std=noise_std,
                  sub_sources=sub_sources, topography=topography, labels=list(LABELS))
    _write_text(out_dir / "cohort.json", json.dumps({"synthetic": True, **params}, indent=1) + "\n")
    return out_dir


def _sym(a):
    """Symmetric with a zero diagonal (couplings between networks only), over the last two axes."""
    a = np.triu(a, 1)
    return a + np.swapaxes(a, -1, -2)


def _simulate_cohort(rng, pop, n_subj, per, prefix):
    """n_subj subjects of `per` scans each from the population `pop` (make_synthetic_cohort) ->
    (S, C, T) float16 NaN-padded, subject id per scan, labels (n_subj, L) as written."""
    roi_net, eff, length_range = pop["roi_net"], pop["eff"], pop["length_range"]
    N, C = pop["K_pop"].shape[0], len(roi_net)
    y, coded = _draw_labels(rng, n_subj)                                   # (n, L)
    F = _sym(rng.normal(0, 0.04, (n_subj, N, N)))
    gain = 1 + coded @ eff["gain"]                                         # (n,)
    A_subj = gain[:, None, None] * (0.5 * np.eye(N) + pop["K_pop"] + F + np.einsum("sl,lij->sij", coded,
                                                                                    eff["between"]))
    share = np.clip(WITHIN_BASE + coded @ eff["within"], 0.0, 0.95)       # (n, N)
    phi = np.clip(PHI_BASE + coded @ eff["timescale"], 0.0, 0.95)         # (n, N)
    A = np.repeat(A_subj, per, axis=0) + _sym(rng.normal(0, 0.015, (n_subj * per, N, N)))
    A = _stable(A)                                                         # keep every VAR stable
    topo = pop["loading"] + pop["deviation"] * rng.standard_normal((n_subj, C, pop["loading"].shape[1]))  # (n, C, J)
    topo = np.repeat(topo, per, axis=0).astype(np.float32)                 # (n·per, C, J) per scan
    share, phi = np.repeat(share, per, axis=0), np.repeat(phi, per, axis=0)
    lengths = rng.integers(length_range[0], length_range[1] + 1, n_subj * per)
    x = np.empty((len(A), C, length_range[1]), dtype=np.float16)            # (S, C, T)
    for i in range(0, len(A), 64):   # chunks keep the float32 intermediates small
        j = slice(i, i + 64)
        xi = _simulate(rng, A[j], lengths[j], roi_net, topo[j], pop["noise_std"], share[j], phi[j])
        x[j] = np.nan
        x[j, :, :xi.shape[-1]] = xi
    ids = [f"{prefix}{i:04d}" for i in range(n_subj)]
    return x, [s for s in ids for _ in range(per)], y


def _write_text(path, text):
    with atomic_write(path, "w") as f:
        f.write(text)


def _write_scans(out_dir, name, x, subjects):
    """name.npy and name_subjects.txt."""
    path = out_dir / f"{name}.npy"
    with atomic_write(path) as f:
        np.save(f, x)
    _write_text(subjects_path(path), "\n".join(subjects) + "\n")


def default_synthetic_dir() -> Path:
    """`synthetic/` at the top of the repository (git-ignored)."""
    return Path(__file__).resolve().parents[1] / "synthetic"


def _synthetic_problem(d, expect):
    """Why the cohort in `d` cannot be reused (None when it can)."""
    try:
        meta = json.loads((d / "cohort.json").read_text())
    except (OSError, ValueError):
        return "not generated yet" if not d.exists() else "cohort.json missing or unreadable"
    if meta.get("version") != SYNTH_VERSION:
        return f"cohort version {meta.get('version')}, this code writes version {SYNTH_VERSION}"
    if any(meta.get(k) != v for k, v in expect.items()):
        return "generated with other parameters"
    try:
        S = expect["n_pretrain_subjects"] * expect["scans_per_subject"]
        for name, n in (("pretrain", S), ("probe", expect["n_probe"])):
            path = d / f"{name}.npy"
            x = np.load(path, mmap_mode="r")
            if x.shape[:2] != (n, meta["n_rois"]) or len(subjects_path(path).read_text().split()) != n:
                return f"{name} files do not match cohort.json"
        lines = (d / "probe_labels.csv").read_text().splitlines()
        if len(lines) != expect["n_probe"] + 1 or lines[0].split(",") != ["subject", *LABELS]:
            return "probe_labels.csv does not match cohort.json"
    except (OSError, ValueError) as e:
        return f"unreadable files ({e})"
    return None


def ensure_synthetic_cohort(directory=None, **kwargs) -> Path:
    """The synthetic cohort's folder, generated on first use (~10 s) and reused after.

    kwargs go to make_synthetic_cohort; the cohort is regenerated when files are missing, corrupt,
    of another cohort version (labels included), or were made with other parameters. Every file is
    written atomically and cohort.json last, so concurrent callers never read a half-written file, and
    a cohort whose cohort.json is missing or stale is regenerated."""
    if "network_map" in kwargs:
        raise TypeError("ensure_synthetic_cohort uses the default network map; call make_synthetic_cohort "
                        "for another one")
    d = Path(directory) if directory is not None else default_synthetic_dir()
    defaults = {k: p.default for k, p in inspect.signature(make_synthetic_cohort).parameters.items()
                if k not in ("out_dir", "network_map")}
    expect = {**defaults, **kwargs, "version": SYNTH_VERSION, "labels": list(LABELS)}
    expect["length_range"] = list(expect["length_range"])
    problem = _synthetic_problem(d, expect)
    if problem:
        print(f"[synthetic] generating the SYNTHETIC cohort v{SYNTH_VERSION} in {d} ({problem}) ...",
              file=sys.stderr, flush=True)
        make_synthetic_cohort(d, **kwargs)
    print(f"[synthetic] using SYNTHETIC data (simulated, not real fMRI) from {d}: "
          f"{expect['n_pretrain_subjects']} pretraining subjects x {expect['scans_per_subject']} scans, "
          f"{expect['n_probe']} probe subjects with simulated labels {', '.join(LABELS)}",
          file=sys.stderr, flush=True)
    return d


def describe_labels():
    """One line per label: its mechanisms and components (network ids of the default map)."""
    lines = []
    for label, design in DESIGN.items():
        parts = []
        for mech, comp in design.items():
            if mech == "gain":
                parts.append(f"gain {'up' if comp > 0 else 'down'}")
            else:
                parts.append(f"{mech} " + ", ".join(f"{'-'.join(map(str, k)) if isinstance(k, tuple) else k}"
                                                    f"{'+' if s > 0 else '-'}" for k, s in comp.items()))
        lines.append(f"  {label:<15} {'; '.join(parts)}")
    return "\n".join(lines)


if __name__ == "__main__":
    from data.load import load_scans
    t0 = time.time()
    folder = ensure_synthetic_cohort()
    for name in ("pretrain", "probe"):
        sc = load_scans(folder / f"{name}.npy")
        print(f"{name}: {len(sc)} scans, {sc.n_subjects} subjects, {sc.n_rois} ROIs, "
              f"lengths {sc.lengths.min()}-{sc.lengths.max()}")
    print(f"labels ({folder / 'probe_labels.csv'}; mechanisms and network ids, + up / - down for label 1 "
          f"or older age):\n{describe_labels()}")
    print(f"cohort v{SYNTH_VERSION} ({time.time() - t0:.1f} s); the model and effect sizes: "
          f"python -c 'import data.synthetic as s; help(s)'")

"""Features of a frozen model for every scan of a dataset, and what probe.py and embed.py share to
get them: the data and model options, loading, the FC and random-encoder baselines, and the
on-disk feature cache (SPEC §9).

Every scan gives 8 evenly spaced crops (scans.probe_crops: z-scored, no augmentation); each crop
goes through the frozen teacher's `features()` (mean of the N·P output tokens ‖ CLS, 2D values):
`encoder_features` -> (S, 8, 2D). The baselines: `fc_features`, Fisher-z Pearson FC over the whole
scan (one sample per scan), and `random_encoder`, a freshly initialised encoder of the checkpoint's
config. `method_features` computes all of a probe run's features; the encoder ones are cached on
disk per checkpoint, network map and data (fileio.file_key), so probing several tasks extracts them
once. `cli` is the scripts' error convention: a bad input is one line on stderr and exit code 2.

    python probe.py --ckpt runs/demo/teacher.pt --task sz      # features, then the linear probe
    python embed.py --ckpt runs/demo/teacher.pt                # features written per scan
"""
import hashlib
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch

import data
import networks
import runtime
import synthetic as synth   # (`synthetic` names a flag below)
from checkpoint import load_teacher
from encoder import Encoder
from fileio import atomic_write, file_key
from progress import Progress
from scans import fisher_z, probe_crops, scan_fc


# ----------------------------------------------------------------------------------------------
# options, model and data (probe.py and embed.py)

def add_data_arguments(p):
    """The options probe.py and embed.py share: the model's map, the data, crops, device."""
    p.add_argument("--networks", default="default",
                   help="ROI -> network map; applies only to a checkpoint in the authors' format (ours carry their "
                        "own): 'default' (the 457-ROI layout, SPEC §2) or a file with one network id per ROI")
    p.add_argument("--data", help="scans: .npy (S, C, T), a folder of per-scan .npy/.csv/.tsv files, or an .h5 in "
                                  "the authors' layout (default: the built-in synthetic probe cohort)")
    p.add_argument("--layout", default="SCT", choices=["SCT", "STC"],
                   help="axis order of a .npy array (default %(default)s)")
    p.add_argument("--tr", type=float, help="repetition time of the data in s, e.g. 0.72 for HCP: every scan is "
                                            "resampled to the 2.0 s grid the model knows. Without it the data are "
                                            "taken to be at 2.0 s already")
    p.add_argument("--subjects", help="text file, one subject id per scan (default: BIDS names of a folder's "
                                      "files, X_subjects.txt beside X.npy, or an .h5's long_subject_id)")
    p.add_argument("--crops", type=int, default=8, help="evenly spaced crops per scan (default %(default)s)")
    p.add_argument("--batch-size", type=int, help="crops per forward pass (default 64 on CPU, 512 on CUDA); "
                                                  "lower it if the GPU runs out of memory")
    p.add_argument("--device", default="auto", help="auto (CUDA when there is a GPU, else CPU), cpu, cuda, "
                                                    "cuda:1, ... (default %(default)s)")
    p.add_argument("--precision", default="auto", choices=list(runtime.PRECISIONS),
                   help="feature extraction: bf16 autocast on CUDA and on CPUs with native bf16 (auto), "
                        "fp32, or bf16 (default %(default)s)")


def check_data_arguments(args):
    """Errors in the shared options that need no file."""
    if args.crops < 1:
        raise ValueError("--crops must be at least 1")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    if args.data is None:   # the synthetic cohort is at 2.0 s, (S, C, T), with its own ids: say so, never apply
        given = {flag for flag, set_ in (("--subjects", args.subjects is not None), ("--tr", args.tr is not None),
                                         ("--layout", args.layout != "SCT")) if set_}
        data.check_no_data_options(given, "the synthetic probe cohort")


def load_model(ckpt, networks_spec="default"):
    """The frozen teacher and its meta; --networks other than "default" is handed to the loader (it
    maps an authors' checkpoint, and must equal the map one of ours carries)."""
    if networks_spec == "default":
        return load_teacher(ckpt)
    return load_teacher(ckpt, network_map=networks.load_network_map(networks_spec))


def load_data(args, n_rois):
    """--data (or, without it, the built-in synthetic probe cohort) -> (scans, data path, synthetic).
    n_rois: the length of the model's network map, which the data must match."""
    synthetic = args.data is None
    if synthetic:
        folder = Path(synth.ensure_synthetic_cohort())
        data_path = folder / "probe.npy"
        print(f"No --data given: using the built-in SYNTHETIC probe cohort in {folder} (simulated subjects never "
              f"seen in pretraining). Its numbers check the pipeline; they say nothing about real brains.")
    else:
        data_path = Path(args.data)
    try:   # n_rois is checked before any pass over the data
        scans = data.load_scans(data_path, layout=args.layout, tr=args.tr, n_rois=n_rois, subjects=args.subjects)
    except ValueError as e:
        if not synthetic:   # the cohort takes no data options (check_data_arguments): its atlas is the one error
            raise
        raise ValueError(f"{e} (the built-in synthetic cohort has the default 457 ROIs: pass --data)") from None
    return scans, data_path, synthetic


def crops_per_batch(args, device):
    """Crops per forward pass: --batch-size, else 512 on CUDA and 64 on a CPU."""
    return args.batch_size or (512 if str(device).startswith("cuda") else 64)


def cli(run_fn, args, prog):
    """Run a script's `run(args)`; a ValueError (bad input) is one line on stderr and exit code 2."""
    try:
        return run_fn(args)
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


# ----------------------------------------------------------------------------------------------
# features

def encoder_features(encoder, scans, n_crops=8, batch_size=64, device="cpu", label="features", precision="auto"):
    """Frozen features of every probe crop -> (S, n_crops, 2D) float32.

    Batched under inference_mode. precision: fp32, bf16 (autocast), or auto = runtime.resolve_precision
    (bf16 on CUDA and on CPUs with native bf16). The features are returned as float32 either way."""
    encoder = encoder.to(device).eval()
    per_batch = max(1, batch_size // n_crops)                      # scans per forward
    S, D2 = len(scans), 2 * encoder.config.dim
    out = np.empty((S, n_crops, D2), dtype=np.float32)
    progress = Progress(S * n_crops, f"  {label}", "crops")
    dev = torch.device(device)
    if precision == "auto":
        precision = runtime.resolve_precision(precision, dev)[0]
    with torch.inference_mode(), runtime.autocast(dev, precision):
        for s0 in range(0, S, per_batch):
            idx = np.arange(s0, min(S, s0 + per_batch))
            crops = probe_crops(scans, idx, encoder.config.crop_len, n_crops, dev)  # (s, n_crops, C, T')
            f = encoder.features(crops.flatten(0, 1))                  # (s*n_crops, 2D)
            out[idx] = f.float().cpu().numpy().reshape(len(idx), n_crops, D2)
            progress.update(int(idx[-1] + 1) * n_crops)
    return out


def fc_features(scans, chunk=64):
    """Functional connectivity per scan -> (S, 1, C(C-1)/2) float32: Fisher-z of the Pearson
    correlations over the whole valid scan, upper triangle."""
    iu = np.triu_indices(scans.n_rois, 1)
    out = np.empty((len(scans), 1, len(iu[0])), dtype=np.float32)
    for s0 in range(0, len(scans), chunk):
        r = scan_fc(scans, np.arange(s0, min(len(scans), s0 + chunk)))           # (b, C, C)
        out[s0:s0 + len(r), 0] = fisher_z(r[:, iu[0], iu[1]])
    return out


def random_encoder(encoder, network_map, seed=0):
    """A freshly initialised encoder with the checkpoint's config (the 'is pretraining worth it' baseline)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Encoder(encoder.config, network_map).eval()


def cached(path, compute):
    """np.load(path) if it exists, else compute() and save atomically (several probe runs share it)."""
    if path is not None and path.is_file():
        try:
            return np.load(path)
        except (OSError, ValueError):
            pass                                                    # unreadable cache: recompute
    arr = compute()
    if path is not None:
        try:
            with atomic_write(path) as f:
                np.save(f, arr)
        except OSError as e:                                        # read-only checkpoint folder: go on
            print(f"  note: could not cache features in {path.parent} ({e}); use --cache-dir", file=sys.stderr)
    return arr


def method_features(args, setup):
    """Per-scan features of the teacher and the baselines of a probe run (probe.Setup) ->
    {method: (S, K, F)}; encoder features come from (and go to) the on-disk cache."""
    cache_dir = (None if args.no_cache else Path(args.cache_dir) if args.cache_dir
                 else setup.ckpt.resolve().parent / ".feature_cache")
    device, precision, scans = setup.device, setup.precision, setup.scans
    print(f"  features: {'bf16 autocast' if precision == 'bf16' else 'fp32'} on {device} ({setup.precision_reason})")
    common = dict(data=scans.key, crops=args.crops,
                  crop_len=setup.encoder.config.crop_len, precision=precision, version=1)

    def cache_path(**model):
        key = hashlib.sha1(json.dumps({**common, **model}, sort_keys=True, default=str).encode()).hexdigest()[:20]
        return None if cache_dir is None else cache_dir / f"{key}.npy"

    def extract(make_encoder, label):   # the encoder is built only on a cache miss
        return lambda: encoder_features(make_encoder(), scans, args.crops, crops_per_batch(args, device), device,
                                        label, precision)

    # the map is part of the model: --networks can map one authors' checkpoint in several ways
    network_map = setup.meta["network_map"].numpy()
    map_id = hashlib.sha1(network_map.tobytes()).hexdigest()
    feats = {"teacher": cached(cache_path(model=file_key([setup.ckpt]), map=map_id),
                               extract(lambda: setup.encoder, "teacher features"))}
    if "random" in setup.baselines:
        model_id = dict(model="random", seed=0, config=setup.meta["encoder_config"], torch=torch.__version__,
                        map=map_id)
        feats["random"] = cached(cache_path(**model_id), extract(partial(random_encoder, setup.encoder, network_map),
                                                                 "random-encoder features"))
    if "fc" in setup.baselines:
        feats["fc"] = fc_features(scans)
    return feats

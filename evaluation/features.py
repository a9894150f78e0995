"""Features of a frozen model for every scan of a dataset, and the baselines beside them (SPEC §9).

Every scan gives 8 evenly spaced crops (data/preprocess.probe_crops: z-scored, no augmentation); each
crop goes through the frozen teacher's `features()` (mean of the N·P output tokens ‖ CLS, 2D values):
`encoder_features` -> (S, 8, 2D). The baselines: `fc_features`, Fisher-z Pearson FC over the whole
scan (one sample per scan), and `random_encoder`, a freshly initialised encoder of the checkpoint's
config. `method_features` computes all of a probe run's features; the encoder ones are cached on
disk per checkpoint, network map and data (machine/fileio.file_key), so probing several tasks
extracts them once (`feature_cache`, which evaluation/by_network.py shares for its masked features).

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

from data.connectivity import fisher_z, scan_fc
from data.preprocess import probe_crops
from encoder import Encoder
from evaluation.options import crops_per_batch
from machine import runtime
from machine.fileio import atomic_write, file_key
from machine.progress import Progress


def encoder_features(encoder, scans, n_crops=8, batch_size=64, device="cpu", label="features", precision="auto",
                     masked_networks=None):
    """Frozen features of every probe crop -> (S, n_crops, 2D) float32.

    Batched under inference_mode. precision: fp32, bf16 (autocast), or auto = runtime.resolve_precision
    (bf16 on CUDA and on CPUs with native bf16). The features are returned as float32 either way.
    masked_networks: networks replaced by the mask embedding in every crop (Encoder.features)."""
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
            f = encoder.features(crops.flatten(0, 1), masked_networks)  # (s*n_crops, 2D)
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


def feature_cache(args, setup):
    """The encoder features of a probe run, cached on disk per model, map, data, crops and precision ->
    get(model_id, make_encoder, label, masked_networks=None) -> (S, K, 2D). The encoder is built only
    on a cache miss; masked_networks (Encoder.features) is part of the key (evaluation/by_network.py),
    and the networks of atlases the data lack (setup.data.masked_networks) are masked in every call."""
    cache_dir = (None if args.no_cache else Path(args.cache_dir) if args.cache_dir
                 else (setup.home or setup.ckpt.resolve().parent) / ".feature_cache")
    device, precision, scans = setup.device, setup.precision, setup.scans
    absent = list(setup.data.masked_networks or []) if setup.data is not None else []   # atlases a scan lacks
    common = dict(data=scans.key, crops=args.crops,
                  crop_len=setup.encoder.config.crop_len, precision=precision, version=1)

    def get(model_id, make_encoder, label, masked_networks=None):
        # the absent atlases' networks stay masked whatever else is (by_network.py masks the others)
        masked = sorted({int(n) for n in [*absent, *(masked_networks if masked_networks is not None else [])]}) or None
        key = {**common, **model_id, **({"masked": masked} if masked else {})}
        digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
        return cached(None if cache_dir is None else cache_dir / f"{digest}.npy",
                      lambda: encoder_features(make_encoder(), scans, args.crops, crops_per_batch(args, device), device,
                                               label, precision, masked))
    return get


def map_id(setup):
    """The network map is part of the model: --networks can map one authors' checkpoint in several ways."""
    return hashlib.sha1(setup.meta["network_map"].numpy().tobytes()).hexdigest()


def teacher_id(setup):
    return dict(model=file_key([setup.ckpt]), map=map_id(setup))


def method_features(args, setup):
    """Per-scan features of the teacher and the baselines of a probe run (evaluation.setup.Setup) ->
    {method: (S, K, F)}; encoder features come from (and go to) the on-disk cache."""
    print(f"  features: {'bf16 autocast' if setup.precision == 'bf16' else 'fp32'} on {setup.device} "
          f"({setup.precision_reason})")
    get = feature_cache(args, setup)
    feats = {"teacher": get(teacher_id(setup), lambda: setup.encoder, "teacher features")}
    if "random" in setup.baselines:
        model_id = dict(model="random", seed=0, config=setup.meta["encoder_config"], torch=torch.__version__,
                        map=map_id(setup))
        network_map = setup.meta["network_map"].numpy()
        feats["random"] = get(model_id, partial(random_encoder, setup.encoder, network_map), "random-encoder features")
    if "fc" in setup.baselines:
        feats["fc"] = fc_features(setup.scans)
    return feats

"""Embeddings: the frozen teacher's features for every scan of a dataset (SPEC §9).

    python embed.py --ckpt runs/demo/teacher.pt                           # the built-in synthetic probe cohort
    python embed.py --ckpt teacher.pt --data ukb.h5 --out ukb_emb.npy       # the authors' HDF5 layout
    python embed.py --ckpt teacher.pt --data ts/ --tr 0.8 --out emb.csv --per-crop
    python embed.py --ckpt hf:SamGijsen/Brain-Semantoks --data cortex.h5 --bandpass 0.01 0.1 --out emb.npy

Every scan gives 8 evenly spaced crops of T' time points (data/preprocess.probe_crops: z-scored, no
augmentation); each crop goes through the frozen teacher's `features()`, concat[mean of the N·P
output tokens, CLS] = 2D values, exactly what probe.py fits its linear probes on (--precision auto:
bf16 autocast on CUDA and on CPUs with native bf16, else fp32). A scan's embedding is the mean over
its crops; --per-crop keeps every crop.

Outputs, for --out X.npy or --out X.csv (default: embeddings_<data name>.npy beside the checkpoint):
  X.npy           float32 (S, 2D), or (S, n_crops, 2D) with --per-crop; rows in scan order
  X_subjects.txt  one subject id per scan, same order
  X_config.json   how the data were read: atlases, masked networks, band-pass, crop length, ROI-order fit
  X.csv           only for --out X.csv: columns subject[, crop], f0..f{2D-1}; a row per scan (crop)

Data options are probe.py's (--data .npy/folder/.h5, --layout, --tr, --subjects, --networks,
--atlases, --bandpass, --crop-len, --crops, --batch-size, --device); both scripts take them from evaluation/options.py, never train.py.
Memory: the features of all crops are held once, S·n_crops·2D·4 bytes (2 GB for 40k scans at paper
size).
"""
import argparse
import csv
import io
import json
import time
from pathlib import Path

import numpy as np
import torch

from data.load import subjects_path
from evaluation import features, options
from machine import runtime
from machine.cli import cli
from machine.fileio import check_writable
from training import checkpoint, release

OUT_SUFFIXES = (".npy", ".csv")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Embed every scan of a dataset with a frozen Brain-Semantoks teacher.")
    p.add_argument("--ckpt", required=True, help="teacher.pt written by train.py, the authors' checkpoint, or the "
                                                 "release by name: hf:SamGijsen/Brain-Semantoks[/FILE][@REVISION]")
    p.add_argument("--out", help="X.npy or X.csv: writes X.npy, X_subjects.txt (and X.csv) "
                                 "(default: embeddings_<data name>.npy beside the checkpoint)")
    p.add_argument("--per-crop", action="store_true", help="keep every crop's features instead of their mean")
    options.add_data_arguments(p)
    return p.parse_args(argv)


def output_path(args) -> Path:
    """--out, checked before any work (a wrong suffix should not cost a pass over the data)."""
    if args.out is None:
        name = "synthetic_probe" if args.data is None else Path(args.data).stem
        return release.output_home(args.ckpt) / f"embeddings_{name}.npy"
    out = Path(args.out)
    if out.suffix.lower() not in OUT_SUFFIXES:
        raise ValueError(f"--out {out}: expected a name ending in .npy or .csv (the .npy and the subject ids "
                         f"are written either way; .csv adds a table)")
    return out


def _csv_field(s):
    """s as the first field of a CSV row, quoted as csv.writer quotes it (an id may hold a comma). The
    rows are joined by hand: np.savetxt formats the numbers, and splitting them for csv.writer would
    double the time."""
    buf = io.StringIO()
    csv.writer(buf).writerow([s, ""])   # the default "\r\n" ending makes it quote \r and \n too
    return buf.getvalue()[:-3]          # less ",\r\n"


def write_csv(path, feats, subjects, chunk=1024):
    """feats (S, F) or (S, K, F) -> CSV with columns subject[, crop], f0..f{F-1}: a row per scan (crop)."""
    per_crop = feats.ndim == 3
    S, F = feats.shape[0], feats.shape[-1]
    K = feats.shape[1] if per_crop else 1
    rows = feats.reshape(S * K, F)                                         # (S·K, F) scan-major
    ids = [_csv_field(str(s)) for s in subjects]
    with open(path, "w", newline="") as f:
        f.write(",".join(["subject"] + (["crop"] if per_crop else []) + [f"f{i}" for i in range(F)]) + "\n")
        for r0 in range(0, S * K, chunk):
            buf = io.StringIO()
            np.savetxt(buf, rows[r0:r0 + chunk], fmt="%.9g", delimiter=",")   # 9 digits: float32 round-trips
            for r, line in enumerate(buf.getvalue().splitlines(), r0):
                s, k = divmod(r, K)
                f.write(f"{ids[s]},{k},{line}\n" if per_crop else f"{ids[s]},{line}\n")


def write_embeddings(out, feats, subjects, config=None) -> list:
    """X.npy, X_subjects.txt, X_config.json (how the data were read: atlases, masked networks, band-pass,
    crop length) and, for out = X.csv, the CSV. Returns the paths written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_name(out.stem + ".npy"), subjects_path(out), out.with_name(out.stem + "_config.json")]
    np.save(paths[0], feats.astype(np.float32, copy=False))
    paths[1].write_text("".join(f"{s}\n" for s in subjects))
    paths[2].write_text(json.dumps(config or {}, indent=1))
    if out.suffix.lower() == ".csv":
        write_csv(out, feats, subjects)
        paths.append(out)
    return paths


def run(args):
    options.check_data_arguments(args)
    out = check_writable(output_path(args))
    device = str(runtime.resolve_device(args.device))
    encoder, meta = checkpoint.load_teacher(args.ckpt, network_map=options.teacher_map(args.networks))
    data = options.load_data(args, encoder, meta)
    scans = data.scans
    precision, why = runtime.resolve_precision(args.precision, torch.device(device))
    print(f"Embedding {len(scans)} scans ({scans.n_subjects} subjects) of "
          f"{'the SYNTHETIC probe cohort' if data.synthetic else data.path}: {args.crops} crops of {data.crop_len} "
          f"time points each, {2 * encoder.config.dim} features per crop, on {device}, {precision} ({why})"
          + (f"; masked networks: {', '.join(data.masked_names)}" if data.masked_names else ""))
    t0 = time.time()
    feats = features.encoder_features(encoder, scans, args.crops, options.crops_per_batch(args, device), device,
                                      "teacher features", precision, data.masked_networks)   # (S, K, 2D)
    if not args.per_crop:
        feats = feats.mean(1)                                                   # (S, 2D) mean over crops
    paths = write_embeddings(out, feats, scans.subjects, data.config())
    print(f"{feats.shape} float32 in {time.time() - t0:.1f} s; wrote {', '.join(map(str, paths))}")
    return {"features": feats, "subjects": list(scans.subjects), "files": paths, "data": data.config()}


def main(argv=None):
    return cli(run, parse_args(argv), "embed.py")


if __name__ == "__main__":
    main()

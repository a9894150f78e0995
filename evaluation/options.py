"""What probe.py, embed.py and finetune.py share: the model and data options, and where the data come
from when none are given (SPEC §9).

- `add_data_arguments(p)` / `check_data_arguments(args)`: the options describing the frozen model's
  map, the data, crops, device and precision, and their checks that need no file.
- `teacher_map(spec)`: `--networks` for the checkpoint loader (training/checkpoint.py).
- `load_data(args, encoder, meta)` -> `Data`: `--data` through data/load.py (with --atlases,
  --bandpass), or without it the built-in synthetic probe cohort (data/synthetic.py), said so on
  stdout; the networks of absent atlases to mask (data/atlases.py), --crop-len applied to the
  encoder, and the ROI-order check of the map on the data (data/networks.check_order, a warning).
- `crops_per_batch(args, device)`: crops per forward pass.

A command calls these in the order the README tells: options, the model, the data, then its own work.
"""
import sys
from dataclasses import dataclass
from pathlib import Path

from data import atlases, networks
from data import synthetic as synth   # (`synthetic` names a flag below)
from data.bandpass import check_band
from data.load import check_no_data_options, load_scans
from machine import runtime


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
    p.add_argument("--atlases", help="for an array or folder holding only some of the release's atlases: which, e.g. "
                                     "schaefer400,tian3 (the absent atlases' networks are masked; an .h5 says itself)")
    p.add_argument("--bandpass", nargs=2, type=float, metavar=("LOW", "HIGH"),
                   help="band-pass every scan, in Hz, after resampling to 2.0 s and before z-scoring (Butterworth "
                        "order 5, zero-phase); the release was trained on data filtered 0.01 0.1")
    p.add_argument("--crop-len", type=int, help="time points per crop, a multiple of the patch length 20 (default: "
                                                "the model's, 100); e.g. 40 for task blocks or short runs")
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
    if args.crop_len is not None and (args.crop_len < 20 or args.crop_len % 20):
        raise ValueError(f"--crop-len {args.crop_len}: must be a multiple of the patch length 20, at least 20")
    atlases.parse_atlases(args.atlases)
    if args.bandpass is not None:
        check_band(*args.bandpass)
    if args.data is None:   # the synthetic cohort is at 2.0 s, (S, C, T), with its own ids: say so, never apply
        given = {flag for flag, set_ in (("--subjects", args.subjects is not None), ("--tr", args.tr is not None),
                                         ("--layout", args.layout != "SCT")) if set_}
        check_no_data_options(given, "the synthetic probe cohort")


def teacher_map(spec="default"):
    """--networks -> the network_map argument of checkpoint.load_teacher: None for "default" (an authors'
    checkpoint then gets the 457-ROI layout, ours keep theirs), else the map read from the file, which
    maps an authors' checkpoint and must equal the map one of ours carries."""
    return None if spec == "default" else networks.load_network_map(spec)


@dataclass
class Data:
    """The data of an evaluation run and how the model reads them."""
    scans: object                      # data/scans.Scans
    path: Path
    synthetic: bool
    masked_networks: list = None       # network ids the mask embedding replaces (absent atlases), or None
    masked_names: list = None
    crop_len: int = 100                # T' the encoder reads
    order_fit: float = None            # the ROI-order check's within- minus between-network Fisher-z

    def config(self):
        """What a report records about the data."""
        sc = self.scans
        return {"atlases": list(sc.atlases) if sc.atlases else None, "masked_networks": self.masked_names,
                "bandpass": list(sc.bandpass) if sc.bandpass else None,
                "bandpass_filter": None if not sc.bandpass else "Butterworth order 5, sosfiltfilt (zero-phase)",
                "crop_len": self.crop_len, "roi_order_fit": self.order_fit}


def load_data(args, encoder, meta):
    """--data (or, without it, the built-in synthetic probe cohort) -> Data. The data must match the
    model's network map (meta["network_map"]); --crop-len is applied to `encoder`."""
    synthetic = args.data is None
    if synthetic:
        folder = Path(synth.ensure_synthetic_cohort())
        data_path = folder / "probe.npy"
        print(f"No --data given: using the built-in SYNTHETIC probe cohort in {folder} (simulated subjects never "
              f"seen in pretraining). Its numbers check the pipeline; they say nothing about real brains.")
    else:
        data_path = Path(args.data)
    m = meta["network_map"].numpy()
    try:   # n_rois is checked before any pass over the data
        scans = load_scans(data_path, layout=args.layout, tr=args.tr, n_rois=len(m), subjects=args.subjects,
                           atlases=args.atlases, bandpass=args.bandpass)
    except ValueError as e:
        if not synthetic:   # the cohort takes no data options (check_data_arguments): its atlas is the one error
            raise
        raise ValueError(f"{e} (the built-in synthetic cohort has the default 457 ROIs: pass --data)") from None
    names = list(meta.get("network_names") or networks.network_names(m))
    masked = atlases.masked_networks(m, scans.absent_rois, names)
    if masked and not meta.get("mask_embedding", True):
        raise ValueError(f"{data_path} lacks {', '.join(a for a in atlases.ALL if a not in scans.atlases)}, whose "
                         f"networks ({', '.join(names[n] for n in masked)}) would be masked, but the checkpoint has no "
                         f"mask embedding (its run never masked tokens); use data with every atlas")
    if masked:
        print(f"Atlases: {', '.join(scans.atlases)}; masked networks (absent atlases, the mask embedding in every "
              f"patch): {', '.join(names[n] for n in masked)}")
    if args.crop_len is not None and args.crop_len != encoder.config.crop_len:
        print(f"Crops of {args.crop_len} time points ({args.crop_len // encoder.config.patch_len} patches): the model "
              f"was pretrained on {encoder.config.crop_len}, so it is used out of its training length")
        encoder.set_crop_len(args.crop_len)
    fit, warning = networks.check_order(scans, m, names, remedies="pass the map the model was trained with "
                                        "(--networks FILE, for an authors' checkpoint)")
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return Data(scans, data_path, synthetic, masked, [names[n] for n in masked] if masked else None,
                encoder.config.crop_len, round(fit["mean"], 4))


def crops_per_batch(args, device):
    """Crops per forward pass: --batch-size, else 512 on CUDA and 64 on a CPU."""
    return args.batch_size or (512 if str(device).startswith("cuda") else 64)

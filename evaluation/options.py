"""What probe.py, embed.py and finetune.py share: the model and data options, and where the data come
from when none are given (SPEC §9).

- `add_data_arguments(p)` / `check_data_arguments(args)`: the options describing the frozen model's
  map, the data, crops, device and precision, and their checks that need no file.
- `teacher_map(spec)`: `--networks` for the checkpoint loader (training/checkpoint.py).
- `load_data(args, n_rois)`: `--data` through data/load.py, or without it the built-in synthetic
  probe cohort (data/synthetic.py), said so on stdout.
- `crops_per_batch(args, device)`: crops per forward pass.

A command calls these in the order the README tells: options, the model, the data, then its own work.
"""
from pathlib import Path

from data import networks
from data import synthetic as synth   # (`synthetic` names a flag below)
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
        check_no_data_options(given, "the synthetic probe cohort")


def teacher_map(spec="default"):
    """--networks -> the network_map argument of checkpoint.load_teacher: None for "default" (an authors'
    checkpoint then gets the 457-ROI layout, ours keep theirs), else the map read from the file, which
    maps an authors' checkpoint and must equal the map one of ours carries."""
    return None if spec == "default" else networks.load_network_map(spec)


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
        scans = load_scans(data_path, layout=args.layout, tr=args.tr, n_rois=n_rois, subjects=args.subjects)
    except ValueError as e:
        if not synthetic:   # the cohort takes no data options (check_data_arguments): its atlas is the one error
            raise
        raise ValueError(f"{e} (the built-in synthetic cohort has the default 457 ROIs: pass --data)") from None
    return scans, data_path, synthetic


def crops_per_batch(args, device):
    """Crops per forward pass: --batch-size, else 512 on CUDA and 64 on a CPU."""
    return args.batch_size or (512 if str(device).startswith("cuda") else 64)

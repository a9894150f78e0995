"""The options of a pretraining run: one dataclass with every default, the command line built from
it, the presets, and the checks of every number before any work (SPEC §7-8).

- `TrainConfig`: every option and its default, the one source of defaults; config.json and the
  checkpoints store it resolved.
- `build_parser()`: one flag per field, with a help that says what it does and when to change it.
- `resolve_config(given)`: fills what the preset (paper, demo) or the data decide, checks ranges.
- `encoder_config(cfg)`: the encoder's architecture (encoder.EncoderConfig) of a run.

    python train.py --help      # every option, with its default
"""
import argparse
import dataclasses
import os
from dataclasses import dataclass
from typing import Optional

from data.atlases import parse_atlases
from data.bandpass import check_band
from data.load import check_no_data_options
from encoder import EncoderConfig
import kernels
from machine import runtime
from masking import MASK_TYPES
from tokenizer import INITS, TOKENIZERS
from training.trainer import WEIGHT_DECAY_POLICIES

PRESET_TRAINING = {  # training defaults a preset brings along (anything given on the command line wins)
    "paper": dict(batch_size=512, epochs=100),                  # SPEC §8
    # ~5 min on a 2-core CPU incl. synthetic data. EMA from 0.9, not 0.99: the teacher averages over
    # ~1/(1-m) steps, and at 0.99 that is most of a 120-step run, leaving it near its random init
    # (measured: teacher projection std 0.018 instead of the SPEC's ~0.07, no subject separation gained)
    "demo": dict(batch_size=64, steps=120, log_every=10, ema_momentum=0.9),
}
KEEP_ON_RESUME = ("out", "resume", "log_every", "ckpt_every", "device", "kernels", "no_kernels",  # may change across a resume
                  "precision", "compile", "grad_checkpoint")  # machine choices: a run may move to another machine


@dataclass
class TrainConfig:
    """Every option of a run and its default: the one source of defaults (build_parser says what each
    does). None: the preset or the data decide (resolve_config). config.json stores the resolved values."""
    # --- data
    data: Optional[str] = None
    layout: str = "SCT"
    tr: Optional[float] = None
    networks: str = "default"
    atlases: Optional[str] = None     # an array/folder with only some atlases: which (data/atlases.py)
    bandpass: Optional[list] = None   # [low, high] Hz, band-pass on loading (data/bandpass.py); None: as given
    # --- model
    preset: Optional[str] = None
    dim: Optional[int] = None
    depth: Optional[int] = None
    heads: Optional[int] = None
    proj_hidden: Optional[int] = None
    init: str = "authors"
    tokenizer: str = "semantic"     # ablation: "linear" (the paper's linear-projection row)
    # --- optimisation (SPEC §7-8)
    batch_size: Optional[int] = None
    epochs: int = 100
    steps: Optional[int] = None
    lr: float = 7e-4
    warmup_epochs: float = 3.0
    weight_decay: float = 0.05
    weight_decay_end: float = 0.3
    weight_decay_params: str = "all"
    ema_momentum: float = 0.99
    ttr_weight: float = 0.5
    ttr_epochs: float = 5.0         # inf: L_TTR at full weight the whole run (the paper's "always on" row)
    cls_weight: float = 1.0         # ablation: 0 removes L_CLS
    tok_weight: float = 0.5
    mask_prob: float = 0.5
    mask_type: str = "slice"        # ablation: "random" (the paper's random-masking row)
    eps: float = 0.05
    clip_grad: float = 1.0
    init_from: Optional[str] = None
    # --- run
    out: Optional[str] = None
    resume: bool = False
    overwrite: bool = False
    seed: int = 0
    log_every: int = 20
    ckpt_every: int = 500
    device: str = "auto"
    kernels: str = "auto"      # which path runs each hot op (kernels/__init__.py); "auto": the measured default
    no_kernels: bool = False   # = kernels "pytorch" (the older flag)
    precision: str = "auto"
    compile: str = "auto"
    grad_checkpoint: bool = False
    eval_scans: int = 256


def build_parser(description=None):
    """One flag per TrainConfig field, named after it. Only what the user gives reaches the namespace
    (argument_default=SUPPRESS): resolve_config fills the rest from TrainConfig and the preset, and
    --resume compares only the given options with the saved run."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    for title, add_options in (("data", _data_options), ("model", _model_options),
                               ("optimisation (SPEC §7-8)", _optimisation_options), ("run", _run_options)):
        add_options(p.add_argument_group(title))
    return p


# Each help says what the option does and when to change it; "(default: ...)" shows TrainConfig's value.

def _data_options(g):
    g.add_argument("--data", type=str, help="""Your scans: an .npy array (S, C, T), a folder with one .npy/.csv/.tsv
        file per scan (time x ROIs), or the authors' .h5. Leave it out to try the pipeline on the built-in
        synthetic cohort (simulated, not real fMRI).""")
    g.add_argument("--layout", type=str, choices=["SCT", "STC"], help=f"""Axis order of a single .npy: SCT =
        (scans, ROIs, time), STC = (scans, time, ROIs). (default: {TrainConfig.layout})""")
    g.add_argument("--tr", type=float, help="""Repetition time of your data in seconds. Give it whenever it is not
        2.0 s (e.g. 0.72 for HCP, 0.735 for UK Biobank): scans are then resampled to the model's 2.0 s grid.
        (default: the data are taken to be at 2.0 s)""")
    g.add_argument("--networks", type=str, help=f"""ROI -> network map: default (SPEC §2, the paper's 457 ROIs),
        FILE (.txt/.csv/.npy, one network id per ROI) for another atlas, or auto:K to cluster the data's group FC
        into K networks when your atlas comes without one. Two ablations, as the authors' max_spatial and
        min_spatial: rois = every ROI its own network (C·P tokens: 2,285 instead of 45 for 457 ROIs, so
        attention costs ~2,600x and the rest ~50x per step, and a tokenizer per ROI), one = a single network
        of all ROIs (P = 5 tokens, one tokenizer; no network masking, only time blocks).
        (default: {TrainConfig.networks})""")
    g.add_argument("--atlases", type=str, help="""For an array or folder with only some of the release's atlases:
        which, e.g. schaefer400,tian3. The absent atlases' networks are masked in every patch and take no loss
        (an .h5 in the authors' layout says itself which it holds). (default: all three)""")
    g.add_argument("--bandpass", type=float, nargs=2, metavar=("LOW", "HIGH"), help="""Band-pass every scan, in Hz,
        after resampling to 2.0 s and before z-scoring (Butterworth order 5, zero-phase); the released model was
        trained on data filtered 0.01 0.1. (default: no filtering)""")


def _model_options(g):
    g.add_argument("--preset", type=str, choices=list(PRESET_TRAINING), help="""Encoder size and training defaults:
        paper (D 768, depth 8, batch 512, 100 epochs; for a GPU) or demo (D 192, depth 4, batch 64, 120 steps;
        minutes on a CPU). (default: demo on the synthetic cohort, paper with --data)""")
    g.add_argument("--dim", type=int, help="Token width D, instead of the preset's.")
    g.add_argument("--depth", type=int, help="Number of transformer blocks, instead of the preset's.")
    g.add_argument("--heads", type=int, help="Attention heads, instead of the preset's (D must be a multiple of them).")
    g.add_argument("--proj-hidden", type=int, help="Hidden width of the projection head, instead of 1024 (SPEC §6).")
    g.add_argument("--init", type=str, choices=list(INITS), help=f"""Initialisation: authors (as the published run) or dino
        (trunc-normal(0.02) Linears, zero biases). (default: {TrainConfig.init})""")
    g.add_argument("--tokenizer", type=str, choices=list(TOKENIZERS), help=f"""semantic: the per-network conv
        tokenizer (SPEC §3). linear removes it (paper's ablation: partial collapse, CLS cosine ~0.95): one
        Linear(R_n·L -> D) per network on each patch, the same token grid. (default: {TrainConfig.tokenizer})""")


def _optimisation_options(g):
    g.add_argument("--batch-size", type=int, help="""Global batch B, split over the processes; the peak lr scales
        with it (lr·B/256). Lower it to fit memory, or when the data have fewer subjects (a batch never holds a
        subject twice). (default: the preset's, paper 512, demo 64)""")
    g.add_argument("--epochs", type=int, help=f"""Length of the run in epochs; an epoch visits each subject once,
        so it is subjects // B steps. (default: {TrainConfig.epochs})""")
    g.add_argument("--steps", type=int, help="""Length of the run in optimizer steps, instead of --epochs; every
        schedule (warm-up, L_TTR window, cosines) scales with it. (default: from --epochs; demo preset 120)""")
    g.add_argument("--lr", type=float, help=f"""Peak learning rate per 256 samples: the peak is lr·B/256. Lower it
        if the loss goes non-finite. (default: {TrainConfig.lr})""")
    g.add_argument("--warmup-epochs", type=float, help=f"""Linear lr warm-up, as a share of --epochs (3 of 100 =
        3%% of the steps, also with --steps). (default: {TrainConfig.warmup_epochs})""")
    g.add_argument("--weight-decay", type=float, help=f"Weight decay at step 0, cosine up to --weight-decay-end. "
                   f"(default: {TrainConfig.weight_decay})")
    g.add_argument("--weight-decay-end", type=float,
                   help=f"Weight decay at the last step. (default: {TrainConfig.weight_decay_end})")
    g.add_argument("--weight-decay-params", type=str, choices=list(WEIGHT_DECAY_POLICIES), help=f"""Which parameters are decayed: all (every one, as the
        published run) or dino (not biases, norms, embeddings). (default: {TrainConfig.weight_decay_params})""")
    g.add_argument("--ema-momentum", type=float, help=f"""Teacher momentum at step 0, cosine up to 1 at the end. A
        short run needs a lower one (demo preset 0.9), else the teacher stays near its random init.
        (default: {TrainConfig.ema_momentum})""")
    g.add_argument("--ttr-weight", type=float, help=f"Weight of L_TTR at step 0, cosine down to 0 over --ttr-epochs. "
                   f"0 turns L_TTR off. (default: {TrainConfig.ttr_weight})")
    g.add_argument("--ttr-epochs", type=float, help=f"""L_TTR's window, as a share of --epochs like the warm-up (5 of
        100 = 5%% of the steps). inf keeps L_TTR at --ttr-weight for the whole run (the paper's "L_TTR always
        on" ablation: 49.60 against 52.39). (default: {TrainConfig.ttr_epochs})""")
    g.add_argument("--cls-weight", type=float, help=f"""Weight of L_CLS; 0 removes it (the paper's ablation: 47.32
        against 52.39), L_TTR and L_Tok stay. (default: {TrainConfig.cls_weight})""")
    g.add_argument("--tok-weight", type=float,
                   help=f"Weight of L_Tok, the masked-token loss. (default: {TrainConfig.tok_weight})")
    g.add_argument("--mask-prob", type=float, help=f"""Share of batches that are masked (the others see full
        input and have no L_Tok). (default: {TrainConfig.mask_prob})""")
    g.add_argument("--mask-type", type=str, choices=list(MASK_TYPES), help=f"""slice: whole networks or whole time
        blocks (SPEC §4). random removes that structure (the paper's ablation: 51.03 against 52.39): each
        token masked on its own at the same ratio U(0.65, 0.85). (default: {TrainConfig.mask_type})""")
    g.add_argument("--eps", type=float,
                   help=f"The coding-rate epsilon of the MCR losses (SPEC §7). (default: {TrainConfig.eps})")
    g.add_argument("--clip-grad", type=float, help=f"Gradient-norm clip. (default: {TrainConfig.clip_grad})")
    g.add_argument("--init-from", type=str, help="""Start student, teacher and head from a model instead of random
        weights: the authors' .pth, the release by name (hf:SamGijsen/Brain-Semantoks), or our teacher.pt / state.pt
        (the optimizer starts fresh). Use it to continue
        pretraining the released model on your data.""")


def _run_options(g):
    g.add_argument("--out", type=str, help="Output folder. (default: runs/<preset>)")
    g.add_argument("--resume", action="store_true", help="Continue the run in --out from its state.pt, exactly "
                   "where it stopped (options other than the machine's must match the saved run).")
    g.add_argument("--overwrite", action="store_true", help="Start afresh even if --out already holds a run.")
    g.add_argument("--seed", type=int, help=f"Seed of the weights, batches and masks. (default: {TrainConfig.seed})")
    g.add_argument("--log-every", type=int, help=f"""A log line and a log.jsonl record every k steps. (default:
        {TrainConfig.log_every}; demo preset 10)""")
    g.add_argument("--ckpt-every", type=int, help=f"""Write teacher.pt and state.pt every k steps (and at the end);
        a stopped run resumes from the last one. (default: {TrainConfig.ckpt_every})""")
    g.add_argument("--device", type=str, help=f"""auto (cuda:LOCAL_RANK if there is a GPU, else cpu), cpu,
        cuda (= cuda:LOCAL_RANK: torchrun's processes one GPU each), cuda:1 ... (default: {TrainConfig.device})""")
    g.add_argument("--kernels", type=str, choices=list(kernels.KERNEL_MODES), help=f"""Which path runs the tokenizer
        and the MCR loss: auto (on CUDA the path the last GPU measurement found fastest, kernels/__init__.py:
        today the PyTorch ones; on a CPU the PyTorch ones), pytorch, triton (the Triton conv and MCR kernels),
        fused (the fused factored tokenizer kernel + the MCR kernel); triton and fused need a GPU.
        (default: {TrainConfig.kernels})""")
    g.add_argument("--no-kernels", action="store_true", help="""Same as --kernels pytorch.""")
    g.add_argument("--precision", type=str, choices=list(runtime.PRECISIONS), help=f"""auto: bf16 autocast on CUDA and
        on CPUs with native bf16, fp32 elsewhere; fp32 for the same numbers on every machine.
        (default: {TrainConfig.precision})""")
    g.add_argument("--compile", type=str, choices=list(runtime.COMPILE_CHOICES), help=f"""torch.compile the
        student/teacher forwards. auto: on for CUDA, off on the CPU (compiling takes minutes there and gains
        little). (default: {TrainConfig.compile})""")
    g.add_argument("--grad-checkpoint", action="store_true", help="""Recompute each transformer block in the
        backward instead of keeping its activations: far less GPU memory for some more time per step
        (BENCHMARKS.md, GPU). Use it when a batch does not fit.""")
    g.add_argument("--eval-scans", type=int, help=f"""Scans used for the subject-separation check at the start and
        the end; 0 skips it. (default: {TrainConfig.eval_scans})""")


def resolve_config(given: dict) -> TrainConfig:
    """Fill the preset-dependent defaults. `given` holds only what the user set explicitly."""
    cfg = TrainConfig(**given)
    if cfg.preset is None:
        cfg.preset = "demo" if cfg.data is None else "paper"
    for k, v in PRESET_TRAINING[cfg.preset].items():
        if k not in given and not (k == "steps" and "epochs" in given):
            setattr(cfg, k, v)
    if cfg.data is None:   # never applied to the synthetic cohort
        check_no_data_options({f"--{k}" for k in ("tr", "layout") if k in given}, "the synthetic cohort")
    if cfg.bandpass is not None:
        cfg.bandpass = list(check_band(*cfg.bandpass))
    parse_atlases(cfg.atlases)
    if cfg.out is None:
        cfg.out = os.path.join("runs", cfg.preset)
    _check_ranges(cfg)
    return cfg


# (field, lowest, highest or None, lowest excluded): outside them a run crashes, misleads or silently
# does something else (--heads 0: ZeroDivisionError; --ema-momentum 2: a teacher moving away from the student)
RANGES = [*((k, 1, None, False) for k in ("batch_size", "epochs", "steps", "log_every", "ckpt_every", "dim", "depth",
                                          "heads", "proj_hidden")),
          *((k, 0, None, False) for k in ("eval_scans", "warmup_epochs", "ttr_epochs", "ttr_weight", "tok_weight",
                                          "cls_weight", "weight_decay", "weight_decay_end", "lr")),   # lr 0: weights stay (tests)
          *((k, 0, None, True) for k in ("eps", "clip_grad")),
          ("mask_prob", 0, 1, False), ("ema_momentum", 0, 1, False)]


def _check_ranges(cfg):
    for k, lo, hi, strict in RANGES:
        v = getattr(cfg, k)
        if v is not None and (v < lo or (strict and v == lo) or (hi is not None and v > hi)):
            want = (f"between {lo} and {hi}" if hi is not None else f"greater than {lo}" if strict
                    else f"at least {lo}")
            raise ValueError(f"--{k.replace('_', '-')} must be {want} (got {v})")


def encoder_config(cfg: TrainConfig) -> EncoderConfig:
    enc = EncoderConfig.preset(cfg.preset)
    over = {k: getattr(cfg, k) for k in ("dim", "depth", "heads", "proj_hidden", "init", "tokenizer")
            if getattr(cfg, k) is not None}
    return dataclasses.replace(enc, **over)

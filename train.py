"""Self-distillation pretraining of Brain-Semantoks (SPEC §4, §6, §7, §8).

A student (tokenizer + transformer + projection head) sees two augmented crops of each scan, with
slice masking on half of the batches; an EMA teacher (same architecture, no gradients, never
masked) provides the targets. Loss = L_CLS + w(step)·L_TTR + 0.5·L_Tok, all MCR-style (no softmax,
no centring). After training the student is discarded: <out>/teacher.pt is the model.

    python train.py                                   # demo: built-in synthetic cohort, ~5 min on a laptop CPU
    python train.py --data scans.npy --preset paper   # your data, (S, C, T) at TR 2.0 s
    python train.py --data folder/ --networks auto:9  # per-scan .npy/.csv/.tsv, ROI groups from the data
    torchrun --nproc_per_node 4 train.py --data scans.npy --preset paper
    python train.py --out runs/demo --resume          # continue a stopped run exactly where it stopped
    python train.py --help                            # every option, with its default

Precision and compilation are machine choices (runtime.py): --precision auto runs bf16 autocast on
CUDA and on CPUs with native bf16 (AVX512_BF16/AMX), fp32 elsewhere; --compile auto compiles the
student/teacher forwards on CUDA only. The run prints what they resolved to and why, and stores it
under "runtime" in config.json and the checkpoints.

Files in --out: teacher.pt (the model, checkpoint.py), state.pt (everything needed to resume),
config.json, log.jsonl (one line per log step), curves.png, network_fc.png (--networks auto:K).

Reading order: this file is the driver (options, then `train`: output folder, data and network map,
models, loop, final evaluation); objective.py is what is optimised (student, EMA teacher, losses),
schedules.py how lr, weight decay, EMA momentum and the L_TTR weight move with the step, trainer.py
one optimizer step, monitor.py whether the run learns.
"""
import argparse
import dataclasses
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from typing import Optional

import torch.distributed as dist

import checkpoint
import data
import kernels
import networks
import runtime
import synthetic
from encoder import EncoderConfig
from objective import WEIGHT_DECAY_POLICIES
from scans import TrainBatches, group_fc
from monitor import plot_curves, separation_crops, separation_line, subject_separation, warmup_warning
from tokenizer import INITS
from trainer import NonFiniteLoss, RunFiles, Trainer, train_loop

PRESET_TRAINING = {  # training defaults a preset brings along (anything given on the command line wins)
    "paper": dict(batch_size=512, epochs=100),                  # SPEC §8
    # ~5 min on a 2-core CPU incl. synthetic data. EMA from 0.9, not 0.99: the teacher averages over
    # ~1/(1-m) steps, and at 0.99 that is most of a 120-step run, leaving it near its random init
    # (measured: teacher projection std 0.018 instead of the SPEC's ~0.07, no subject separation gained)
    "demo": dict(batch_size=64, steps=120, log_every=10, ema_momentum=0.9),
}
KEEP_ON_RESUME = ("out", "resume", "log_every", "ckpt_every", "device", "no_kernels",  # may change across a resume
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
    # --- model
    preset: Optional[str] = None
    dim: Optional[int] = None
    depth: Optional[int] = None
    heads: Optional[int] = None
    proj_hidden: Optional[int] = None
    init: str = "authors"
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
    ttr_epochs: float = 5.0
    tok_weight: float = 0.5
    mask_prob: float = 0.5
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
    no_kernels: bool = False
    precision: str = "auto"
    compile: str = "auto"
    grad_checkpoint: bool = False
    eval_scans: int = 256


def build_parser():
    """One flag per TrainConfig field, named after it. Only what the user gives reaches the namespace
    (argument_default=SUPPRESS): resolve_config fills the rest from TrainConfig and the preset, and
    --resume compares only the given options with the saved run."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
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
        into K networks when your atlas comes without one. (default: {TrainConfig.networks})""")


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
        100 = 5%% of the steps). (default: {TrainConfig.ttr_epochs})""")
    g.add_argument("--tok-weight", type=float,
                   help=f"Weight of L_Tok, the masked-token loss. (default: {TrainConfig.tok_weight})")
    g.add_argument("--mask-prob", type=float, help=f"""Share of batches that are slice-masked (the others see full
        input and have no L_Tok). (default: {TrainConfig.mask_prob})""")
    g.add_argument("--eps", type=float,
                   help=f"The coding-rate epsilon of the MCR losses (SPEC §7). (default: {TrainConfig.eps})")
    g.add_argument("--clip-grad", type=float, help=f"Gradient-norm clip. (default: {TrainConfig.clip_grad})")
    g.add_argument("--init-from", type=str, help="""Start student, teacher and head from a model instead of random
        weights: the authors' .pth, or our teacher.pt / state.pt (the optimizer starts fresh). Use it to continue
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
    g.add_argument("--no-kernels", action="store_true", help="""Use the plain-PyTorch paths instead of the Triton
        kernels (to compare, or where a kernel misbehaves).""")
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
        data.check_no_data_options({f"--{k}" for k in ("tr", "layout") if k in given}, "the synthetic cohort")
    if cfg.out is None:
        cfg.out = os.path.join("runs", cfg.preset)
    _check_ranges(cfg)
    return cfg


# (field, lowest, highest or None, lowest excluded): outside them a run crashes, misleads or silently
# does something else (--heads 0: ZeroDivisionError; --ema-momentum 2: a teacher moving away from the student)
RANGES = [*((k, 1, None, False) for k in ("batch_size", "epochs", "steps", "log_every", "ckpt_every", "dim", "depth",
                                          "heads", "proj_hidden")),
          *((k, 0, None, False) for k in ("eval_scans", "warmup_epochs", "ttr_epochs", "ttr_weight", "tok_weight",
                                          "weight_decay", "weight_decay_end", "lr")),   # lr 0: weights stay (tests)
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
    over = {k: getattr(cfg, k) for k in ("dim", "depth", "heads", "proj_hidden", "init") if getattr(cfg, k) is not None}
    return dataclasses.replace(enc, **over)


# ----------------------------------------------------------------------------- output folder

def open_output(cfg, given, files):
    """A new run in --out, or on --resume the saved one -> (its config, its state or None). `given`: the
    options set explicitly; on --resume they must agree with the saved run, but for KEEP_ON_RESUME."""
    if cfg.resume:
        if not os.path.exists(files.state_path):
            raise ValueError(f"--resume: no {files.state_path} to resume from")
        state = checkpoint.load_state(files.state_path)
        saved = state["config"]
        unknown = sorted(set(saved) - {f.name for f in dataclasses.fields(TrainConfig)})
        if unknown:
            raise ValueError(f"--resume: {files.state_path} was written by another version of train.py; its options "
                             f"{', '.join(unknown)} are unknown to this one. Resume it with that version")
        clash = [f"--{k.replace('_', '-')} {getattr(cfg, k)} (saved: {saved.get(k)})" for k in given
                 if k not in KEEP_ON_RESUME and getattr(cfg, k) != saved.get(k)]
        if clash:
            raise ValueError(f"--resume continues the run saved in {cfg.out}, but these options differ from it: "
                             f"{', '.join(clash)}. Drop them, or start a new run with another --out")
        files.say(f"resuming {cfg.out} from step {state['step']}")
        return TrainConfig(**{**saved, **{k: getattr(cfg, k) for k in KEEP_ON_RESUME}}), state
    if os.path.exists(files.state_path) and not cfg.overwrite:
        prev = checkpoint.load_state(files.state_path)
        raise ValueError(f"{cfg.out} already holds a run (step {prev['step']} of {prev['total_steps']}); pass "
                         f"--resume to continue it, --overwrite to start afresh, or another --out")
    return cfg, None


# ----------------------------------------------------------------------------- data and network map

def load_data(cfg, files):
    """--data, or the built-in synthetic cohort -> data.Scans."""
    path = cfg.data
    if path is None:
        path = os.path.join(synthetic.ensure_synthetic_cohort(), "pretrain.npy")
        files.say(f"no --data given: training on the built-in SYNTHETIC cohort {path} "
                  "(random stand-in data for trying the pipeline, not real fMRI)")
    return data.load_scans(path, layout=cfg.layout, tr=cfg.tr)


def load_network_map(cfg, scans, files):
    """--networks -> (C,) network id per ROI; auto:K clusters the group FC and plots it into --out."""
    if cfg.networks.startswith("auto:"):
        try:
            k = int(cfg.networks[5:])
        except ValueError:
            raise ValueError(f"--networks {cfg.networks}: expected auto:K with an integer K, e.g. auto:9") from None
        fc = group_fc(scans, max_scans=2000, seed=cfg.seed)  # a group mean: 2000 scans are plenty
        network_map = networks.cluster_networks(fc, k, seed=cfg.seed)
        if files.rank == 0:
            os.makedirs(cfg.out, exist_ok=True)
            networks.plot_network_fc(fc, network_map, os.path.join(cfg.out, "network_fc.png"))
    else:
        network_map = networks.load_network_map(cfg.networks, n_rois=scans.n_rois)
    return networks.validate_network_map(network_map, n_rois=scans.n_rois)


def training_batches(cfg, scans, enc_cfg, device, rank, world):
    """The batch source, after checking that a global batch fits the processes and the subjects."""
    n_subjects = scans.n_subjects
    if cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by the {world} processes")
    if n_subjects < cfg.batch_size:
        raise ValueError(f"the data have {n_subjects} subjects ({len(scans)} scans) but --batch-size is "
                         f"{cfg.batch_size}; use a batch size of at most {n_subjects}")
    return TrainBatches(scans, device=device, crop_len=enc_cfg.crop_len, seed=cfg.seed, rank=rank, world_size=world)


# ----------------------------------------------------------------------------- models

def start_weights(tr, cfg, enc_cfg, network_map, state, files):
    """Random weights, --init-from's, or on --resume the saved state -> the step to start from."""
    if state is not None:
        tr.load_state_dict(state)
        files.log, files.separation = state["log"], state.get("separation", {})
        return state["step"]
    if cfg.init_from:
        ckpt_cfg, ckpt_map, states = checkpoint.load_init(cfg.init_from, network_map)
        checkpoint.check_architecture(enc_cfg, ckpt_cfg, cfg.init_from, network_map, ckpt_map)
        tr.init_from(states)
        files.say(f"initialised student and teacher from {cfg.init_from}" + (
            " (encoders and projection head)" if states["student"]["head"] is not None else
            " (encoders; its file stores no projection head, which starts fresh)"))
    return 0


def describe_run(cfg, enc_cfg, tr, scans, spe):
    """What rank 0 prints before the first step: config, encoder, data and schedule, parameters."""
    print("config: " + json.dumps(asdict(cfg)), flush=True)
    print(f"encoder: {json.dumps(asdict(enc_cfg))}", flush=True)
    print(f"data: {len(scans)} scans, {scans.n_subjects} subjects, {scans.n_rois} ROIs, "
          f"{tr.student.encoder.n_networks} networks; {spe} steps/epoch, {tr.total} steps, warm-up {tr.warmup}, "
          f"peak lr {tr.peak_lr:.2e}, {tr.world} process(es) x batch {tr.local_b}, device {tr.device}, "
          f"{'bf16 autocast' if tr.precision == 'bf16' else 'fp32'} ({tr.precision_reason}), "
          f"compile {'on' if tr.compiled else 'off'} ({tr.compile_reason})", flush=True)
    decayed = "every parameter" if cfg.weight_decay_params == "all" else "all but biases, norms, embeddings"
    print(f"parameters: student {sum(p.numel() for p in tr.s_params) / 1e6:.1f}M "
          f"(AdamW, weight decay on {decayed}; init {enc_cfg.init})", flush=True)


def train(cfg: TrainConfig, given=()):
    """Run (or resume) pretraining as configured; returns a summary dict (rank 0).
    `given`: the option names set explicitly (on --resume they must agree with the saved run)."""
    rank, world, device = runtime.setup_distributed(cfg.device)
    runtime.tune_cpu(device)  # flush denormals; on a CPU run keep freed memory (runtime.py says why)
    kernels.set_enabled(not cfg.no_kernels)
    files = RunFiles(cfg.out, rank)

    # ============ output folder: a new run, or the saved one to resume ============
    cfg, state = open_output(cfg, given, files)

    # ============ data and ROI -> network map ============
    scans = load_data(cfg, files)
    enc_cfg = encoder_config(cfg)
    network_map = load_network_map(cfg, scans, files)
    batches = training_batches(cfg, scans, enc_cfg, device, rank, world)
    spe = batches.steps_per_epoch(cfg.batch_size // world)
    total = cfg.steps if cfg.steps is not None else cfg.epochs * spe   # >= 1: resolve_config checked both

    # ============ student, EMA teacher, optimizer ============
    tr = Trainer(cfg, enc_cfg, network_map, batches, total, device, rank, world)
    start = start_weights(tr, cfg, enc_cfg, network_map, state, files)
    files.write_config(cfg, enc_cfg, tr, network_map)
    if rank == 0:
        describe_run(cfg, enc_cfg, tr, scans, spe)
    files.warn(warmup_warning(tr.warmup, tr.peak_lr))

    # ============ subject separation at step 0 (monitor.py), on rank 0 ============
    crops, subjects = (separation_crops(scans, cfg.eval_scans, enc_cfg.crop_len) if (rank == 0 and cfg.eval_scans)
                       else (None, None))
    if crops is not None and "start" not in files.separation:
        files.separation["start"] = subject_separation(tr.teacher.encoder, crops.to(device), subjects)
        files.say(f"subject separation at step 0: {json.dumps(files.separation['start'])}")

    # ============ training loop ============
    files.rewrite_log()
    window = train_loop(tr, files, start, cfg.log_every, cfg.ckpt_every)

    # ============ final evaluation ============
    if crops is not None:
        files.separation["end"] = subject_separation(tr.teacher.encoder, crops.to(device), subjects)
    files.save(total, window)
    if rank == 0:
        if "end" in files.separation:
            print(separation_line(files.separation.get("start"), files.separation["end"]), flush=True)
        if files.log:
            plot_curves(files.log, os.path.join(cfg.out, "curves.png"))
        print(f"done: {files.teacher_path}", flush=True)
    if world > 1:
        dist.destroy_process_group()
    return {"out": cfg.out, "teacher": files.teacher_path, "log": files.log, "separation": files.separation,
            "step": total}


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING,
                        format="%(message)s")
    try:
        cfg = resolve_config(vars(args))
        train(cfg, given=tuple(vars(args)))
    except (ValueError, NonFiniteLoss) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2 if isinstance(e, ValueError) else 3)
    except KeyboardInterrupt:
        print(f"\ninterrupted: continue from the last checkpoint with  python train.py --out {cfg.out} --resume",
              file=sys.stderr, flush=True)
        sys.exit(130)


if __name__ == "__main__":
    main()

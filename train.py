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
    python train.py --cls-weight 0 --out runs/no_cls  # an ablation of the paper's table (README "Take it apart";
                                                      # --ttr-weight 0, --ttr-epochs inf, --mask-type random,
                                                      # --tokenizer linear, --networks one|rois); bench/ablations.py

Precision and compilation are machine choices (machine/runtime.py): --precision auto runs bf16 autocast on
CUDA and on CPUs with native bf16 (AVX512_BF16/AMX), fp32 elsewhere; --compile auto compiles the
student/teacher forwards on CUDA only. The run prints what they resolved to and why, and stores it
under "runtime" in config.json and the checkpoints.

Files in --out: teacher.pt (the model, training/checkpoint.py), state.pt (everything needed to resume),
config.json, log.jsonl (one line per log step), curves.png, network_fc.png (--networks auto:K).

Reading order: this file is the driver (`train`: output folder, data and network map, models, loop,
final evaluation); losses.py is what is optimised (student, EMA teacher, losses); in training/,
config.py holds every option and its default, schedules.py how lr, weight decay, EMA momentum and the
L_TTR weight move with the step, batches.py the two views per scan, trainer.py one optimizer step,
monitor.py whether the run learns, checkpoint.py what is written.
"""
import dataclasses
import json
import logging
import os
import sys
from dataclasses import asdict

import torch.distributed as dist

import kernels
from data import atlases, networks, synthetic
from data.connectivity import group_fc
from data.load import load_scans
from machine import runtime
from machine.fileio import check_writable
from training import checkpoint
from training.batches import TrainBatches
from training.config import KEEP_ON_RESUME, TrainConfig, build_parser, encoder_config, resolve_config
from training.monitor import plot_curves, separation_crops, separation_line, subject_separation, warmup_warning
from training.trainer import NonFiniteLoss, RunFiles, Trainer, train_loop


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
    """--data, or the built-in synthetic cohort -> Scans."""
    path = cfg.data
    if path is None:
        path = os.path.join(synthetic.ensure_synthetic_cohort(), "pretrain.npy")
        files.say(f"no --data given: training on the built-in SYNTHETIC cohort {path} "
                  "(random stand-in data for trying the pipeline, not real fMRI)")
    return load_scans(path, layout=cfg.layout, tr=cfg.tr, atlases=cfg.atlases, bandpass=cfg.bandpass)


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


def check_map(cfg, scans, network_map, files):
    """A given map that does not fit the data (e.g. Schaefer in 17-network order): a warning on rank 0,
    never an error (some cohorts are weak). A map clustered from the data (auto:K) fits by construction."""
    if files.rank == 0 and not cfg.networks.startswith("auto:"):
        warning = networks.check_order(scans, network_map, remedies="pass the map of your atlas (--networks FILE), "
                                       "or --networks auto:K", seed=cfg.seed)[1]
        files.warn(warning and f"warning: {warning}")


def absent_networks(scans, network_map, files):
    """The networks of atlases the data lack (masked, no loss), said on rank 0; None when all are there."""
    names = networks.network_names(network_map)
    masked = atlases.masked_networks(network_map, scans.absent_rois, names)
    if masked:
        files.say(f"atlases {', '.join(scans.atlases)}: masked networks (absent atlases; the mask embedding in "
                  f"every patch, no loss): {', '.join(names[n] for n in masked)}")
    return masked


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
    kernels.check_mode("pytorch" if cfg.no_kernels else cfg.kernels, device)
    files = RunFiles(cfg.out, rank)
    if rank == 0:
        check_writable(cfg.out, folder=True)   # before any work

    # ============ output folder: a new run, or the saved one to resume ============
    cfg, state = open_output(cfg, given, files)

    # ============ data and ROI -> network map ============
    scans = load_data(cfg, files)
    enc_cfg = encoder_config(cfg)
    network_map = load_network_map(cfg, scans, files)
    batches = training_batches(cfg, scans, enc_cfg, device, rank, world)
    spe = batches.steps_per_epoch(cfg.batch_size // world)
    check_map(cfg, scans, network_map, files)
    total = cfg.steps if cfg.steps is not None else cfg.epochs * spe   # >= 1: resolve_config checked both

    # ============ student, EMA teacher, optimizer ============
    absent = absent_networks(scans, network_map, files)
    tr = Trainer(cfg, enc_cfg, network_map, batches, total, device, rank, world, absent_networks=absent)
    start = start_weights(tr, cfg, enc_cfg, network_map, state, files)
    files.write_config(cfg, enc_cfg, tr, network_map)
    if rank == 0:
        describe_run(cfg, enc_cfg, tr, scans, spe)
    files.warn(warmup_warning(tr.warmup, tr.peak_lr))

    # ============ subject separation at step 0 (training/monitor.py), on rank 0 ============
    crops, subjects = (separation_crops(scans, cfg.eval_scans, enc_cfg.crop_len) if (rank == 0 and cfg.eval_scans)
                       else (None, None))
    if crops is not None and "start" not in files.separation:
        files.separation["start"] = subject_separation(tr.teacher.encoder, crops.to(device), subjects, absent)
        files.say(f"subject separation at step 0: {json.dumps(files.separation['start'])}")

    # ============ training loop ============
    files.rewrite_log()
    window = train_loop(tr, files, start, cfg.log_every, cfg.ckpt_every)

    # ============ final evaluation ============
    if crops is not None:
        files.separation["end"] = subject_separation(tr.teacher.encoder, crops.to(device), subjects, absent)
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
    args = build_parser(__doc__).parse_args(argv)
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

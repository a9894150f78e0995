"""Fine-tuning: a copy of the pretrained encoder plus a head, trained end to end on the train subjects
of one split, the epoch chosen on val, scored once on test (the paper's fine-tuning evaluation; beyond
SPEC §9, which covers the linear probe: the numbers follow the authors' finetune.py).

- `FinetuneConfig`: every option and its default, each with the line of the authors' code it comes
  from (finetune.py, config/example_config.yaml, util/param_groups.py, data/dataset.py); presets.
- `FineTuned`: encoder + head on the probe features (mean of the output tokens ‖ CLS, "cls_avg").
- `param_groups`: AdamW groups with layer-wise lr decay (deeper blocks keep more of the lr).
- `fit_split`: one split: train, select on val, test once. `run_finetune`: every seed's split
  (labels.split_subjects, the linear probe's splits), results in run_probe's layout.

    python finetune.py --ckpt runs/demo/teacher.pt --task mech_global
    python -m pytest -q tests/test_finetune.py
"""
import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from data.labels import split_subjects
from data.preprocess import augment, crop_starts, gather_crops, read_zscored
from evaluation.linear_probe import METRICS, classification_metrics, regression_metrics
from machine import runtime, seeding
from machine.progress import Progress
from training.schedules import lr_at

HEAD_STREAM, BATCH_STREAM, EVAL_STREAM = 11, 12, 13     # seeding streams of one repeat
CHOICES = {"lr_scale": ("batch", "none"), "tokenizer_lr": ("full", "decayed"), "head": ("linear", "mlp"),
           "class_weights": ("none", "balanced"), "regression_loss": ("l1", "mse"),
           "eval_crops": ("random", "even"), "keep": ("best", "last")}


@dataclass
class FinetuneConfig:
    """One fine-tuning run. Defaults: the authors' fixed-schedule run (use_grid_search: false)."""
    epochs: int = 50                # fixed_epochs (example_config.yaml:158)
    lr: float = 1e-4                # fixed_lr (example_config.yaml:157), the head's; encoder groups below
    lr_scale: str = "batch"         # "batch": lr·B/256 (finetune.py:544); "none": lr as given
    batch_size: int = 16            # subjects per step (example_config.yaml:171)
    weight_decay: float = 0.05      # example_config.yaml:164; none on biases, norms, LayerScale (param_groups.py:105)
    layer_decay: float = 0.9        # lr_decay_rate (example_config.yaml:167): layer l gets decay^(L+1-l)
    encoder_lr_mult: float = 1.0    # encoder_lr_multiplier (example_config.yaml:163)
    tokenizer_lr: str = "full"      # "full": their rule names no tokenizer of theirs (param_groups.py:31 looks for
                                    #   "intra_network_cnns", the model's are network_tokenizers, semantoks.py:177), so
                                    #   it keeps the full lr; "decayed": layer 1, the rule's intent
    grad_clip: float = 1.0          # gradient_clip (example_config.yaml:169); 0: none
    patience: int = 50              # early_stopping_patience (example_config.yaml:154): epochs without a better val
    freeze_epochs: int = 0          # freeze_encoder_epochs (example_config.yaml:168): head only for the first K
    head: str = "linear"            # BatchNorm1d + Linear, weight trunc-normal(2e-5) (finetune.py:303-307); "mlp"
    hidden_dims: tuple = (512, 512, 256)   # the MLP head's (example_config.yaml:143)
    dropout: float = 0.0            # the MLP head's (example_config.yaml:144)
    class_weights: str = "none"     # plain cross-entropy (finetune.py:508); "balanced": weights n/(k·n_c) on train
    regression_loss: str = "l1"     # L1Loss (finetune.py:508), val chosen on MAE (:474); "mse". Targets standardised
                                    #   on train (theirs are raw: a 2e-5 head at lr 6e-6 never reaches an age)
    eval_crops: str = "random"      # val: 1 random crop of a random scan per subject, drawn anew each epoch;
                                    #   test: `crops` random crops (finetune.py:145, :180; dataset.py:256, :268);
                                    #   "even": every scan's `crops` evenly spaced crops, as the linear probe's
    crops: int = 8                  # test_time_crops (example_config.yaml:173); their logits averaged (:627-631)
    keep: str = "best"              # the best val epoch's weights are tested, as their code means to; "last": what
                                    #   it does (finetune.py:485 keeps state_dict() by reference, not a copy)
    grad_checkpoint: bool = False   # recompute each block in the backward (encoder.py): less memory, slower


# demo: the demo teacher on the built-in cohort, a 2-core CPU within minutes. Its lr is not scaled by
# B/256: at their 6.25e-6, 120 steps on 92 train subjects leave the head at chance (measured: best val
# epoch 1, test 50.0 % on mech_global; 1e-4 unscaled: 77.7 % after 10 epochs, the linear probe 75.5 %)
PRESETS = {"paper": {}, "demo": {"epochs": 20, "lr_scale": "none"}}


def check_config(cfg):
    """Errors in a FinetuneConfig, before any file is read."""
    for key, choices in CHOICES.items():
        if getattr(cfg, key) not in choices:
            raise ValueError(f"{key} must be one of {', '.join(choices)} (got {getattr(cfg, key)!r})")
    if cfg.epochs < 1:
        raise ValueError(f"--epochs must be at least 1 (got {cfg.epochs})")
    if cfg.batch_size < 2:
        raise ValueError(f"--batch-size must be at least 2: the head's BatchNorm needs two samples "
                         f"(got {cfg.batch_size})")
    if cfg.lr < 0 or cfg.weight_decay < 0 or cfg.grad_clip < 0 or cfg.encoder_lr_mult < 0:
        raise ValueError("--lr, --weight-decay, --grad-clip and --encoder-lr-mult must not be negative")
    if not 0 < cfg.layer_decay <= 1:
        raise ValueError(f"--layer-decay must be in (0, 1] (got {cfg.layer_decay})")
    if cfg.patience < 1 or cfg.freeze_epochs < 0 or cfg.crops < 1:
        raise ValueError("--patience and --crops must be at least 1, --freeze-epochs at least 0")
    if cfg.freeze_epochs >= cfg.epochs:
        raise ValueError(f"--freeze-epochs {cfg.freeze_epochs} leaves no epoch to train the encoder "
                         f"(--epochs {cfg.epochs}); use the linear probe (probe.py) for a frozen encoder")
    if not 0 <= cfg.dropout < 1 or (cfg.head == "mlp" and not cfg.hidden_dims):
        raise ValueError("--dropout must be in [0, 1) and an MLP head needs --hidden-dims")


# ----------------------------------------------------------------------------------------------
# the model and its optimizer groups

def make_head(in_dim, out_dim, kind="linear", hidden_dims=(), dropout=0.0):
    """The authors' heads (finetune.py:283-331): "linear" = BatchNorm1d + Linear; "mlp" = (Linear, GELU,
    Dropout) per hidden width, then Linear. Output weights trunc-normal(2e-5), hidden ones (0.02)."""
    if kind == "linear":
        layers = [nn.BatchNorm1d(in_dim), nn.Linear(in_dim, out_dim)]
    else:
        layers, d = [], in_dim
        for h in hidden_dims:
            layers += [nn.Linear(d, h), nn.GELU(), nn.Dropout(dropout)]
            d = h
        layers.append(nn.Linear(d, out_dim))
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    for m in linears:
        nn.init.trunc_normal_(m.weight, std=2e-5 if m is linears[-1] else 0.02)
    return nn.Sequential(*layers)


class FineTuned(nn.Module):
    """Encoder + head: x (B, C, T') -> (B, outputs), on Encoder.features (B, 2D); masked_networks (the
    atlases the data lack) get the mask embedding in every crop, in training as in evaluation."""

    def __init__(self, encoder, head, masked_networks=None):
        super().__init__()
        self.encoder, self.head, self.masked_networks = encoder, head, masked_networks

    def forward(self, x):
        return self.head(self.encoder.features(x, self.masked_networks))


def layer_id(name, depth, tokenizer_lr="full"):
    """The authors' layer of an encoder parameter (util/param_groups.py:14-55): 0 the CLS, mask and
    network embeddings, 1 the tokenizer (or depth+1: "full", see FinetuneConfig), i+2 block i,
    depth+1 the final norm."""
    if name in ("cls_token", "mask_token", "network_embed"):
        return 0
    if name.startswith("tokenizer."):
        return 1 if tokenizer_lr == "decayed" else depth + 1
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 2
    return depth + 1


def param_groups(model, cfg, lr):
    """AdamW groups (finetune.py:198-218): encoder parameter of layer l at lr·mult·decay^(L+1-l), no
    weight decay on biases, norms and LayerScale; the head at lr, all decayed. decay 1 is their other
    branch (finetune.py:221): every encoder parameter decayed. Each group keeps its `base_lr`."""
    depth = model.encoder.config.depth
    groups = {}
    for name, p in model.encoder.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        plain = cfg.layer_decay < 1 and (leaf.endswith("bias") or "norm" in name or leaf in ("ls1", "ls2"))
        mult = cfg.encoder_lr_mult * cfg.layer_decay ** (depth + 1 - layer_id(name, depth, cfg.tokenizer_lr))
        groups.setdefault((mult, 0.0 if plain else cfg.weight_decay), []).append(p)
    out = [{"params": ps, "lr": lr * m, "base_lr": lr * m, "weight_decay": wd} for (m, wd), ps in groups.items()]
    return out + [{"params": list(model.head.parameters()), "lr": lr, "base_lr": lr, "weight_decay": cfg.weight_decay}]


# ----------------------------------------------------------------------------------------------
# inputs: training crops, evaluation crops

def subject_scans(task):
    """Per subject, the positions of its scans in task.scans: [array, ...] of length len(task.y)."""
    order = np.argsort(task.unit, kind="stable")
    return np.split(order, np.cumsum(np.bincount(task.unit, minlength=len(task.y)))[:-1])


def train_crops(scans, task, by_subject, subj, crop_len, rng, gen, device):
    """One random crop of one random scan per subject, augmented as in pretraining but without the
    ROI drop (the authors' augment_level [0, 1, 1, 1], finetune.py:179) -> (b, C, T')."""
    pos = np.array([rng.choice(by_subject[s]) for s in subj])
    idx = task.scans[pos]
    lengths = scans.lengths[idx]
    starts = rng.integers(0, np.maximum(lengths - crop_len, 0) + 1)
    x = crop_batch(scans, idx, starts, crop_len, device)
    return augment(x, gen, drop_rois=False)


def crop_batch(scans, idx, starts, crop_len, device):
    """Crops of scans idx (M,) at starts (M,), z-scored over each scan -> (M, C, T') on device."""
    uniq, rows = np.unique(idx, return_inverse=True)
    z = read_zscored(scans, uniq, torch.as_tensor(scans.lengths[uniq], device=device), device, crop_len)
    return gather_crops(z, torch.as_tensor(rows, device=device), torch.as_tensor(starts, device=device), crop_len)


def eval_plan(scans, task, by_subject, subj, n_crops, mode, crop_len, rng):
    """The crops that score subjects `subj` -> scan idx (M,), starts (M,), local subject (M,).
    "even": every scan, n_crops evenly spaced; "random": one random scan, n_crops random starts."""
    pos = ([by_subject[s] for s in subj] if mode == "even" else [[rng.choice(by_subject[s])] for s in subj])
    local = np.concatenate([np.full(len(p), i) for i, p in enumerate(pos)])
    idx = task.scans[np.concatenate(pos)]
    lengths = scans.lengths[idx]
    if mode == "even":
        starts = crop_starts(lengths, crop_len, n_crops)                          # (s, n_crops)
    else:
        starts = rng.integers(0, np.maximum(lengths - crop_len, 0)[:, None] + 1, (len(idx), n_crops))
    return np.repeat(idx, n_crops), starts.reshape(-1), np.repeat(local, n_crops)


@torch.no_grad()
def predict(model, scans, plan, n_subjects, crop_len, device, precision, per_batch):
    """Outputs averaged over each subject's crops (the authors average logits) -> (U, k) float64."""
    idx, starts, local = plan
    model.eval()
    out = torch.zeros(n_subjects, model.head[-1].out_features, dtype=torch.float64)
    with runtime.autocast(torch.device(device), precision):
        for c0 in range(0, len(idx), per_batch):
            sl = slice(c0, c0 + per_batch)
            o = model(crop_batch(scans, idx[sl], starts[sl], crop_len, device)).double().cpu()   # (m, k)
            out.index_add_(0, torch.as_tensor(local[sl]), o)
    return (out / torch.bincount(torch.as_tensor(local), minlength=n_subjects)[:, None]).numpy()


def score(out, y, task, target):
    """Averaged outputs (U, k) -> metrics, as the linear probe reports them."""
    if task.kind == "classification":
        return classification_metrics(y, torch.softmax(torch.as_tensor(out), 1).numpy(), len(task.classes))
    return regression_metrics(y, out[:, 0] * target[1] + target[0])


# ----------------------------------------------------------------------------------------------
# one split, every split

def _loss_fn(cfg, task, y_train):
    """Cross-entropy (optionally class-balanced on the train subjects) or L1/MSE on standardised targets."""
    if task.kind == "regression":
        return F.l1_loss if cfg.regression_loss == "l1" else F.mse_loss
    weight = None
    if cfg.class_weights == "balanced":
        counts = np.bincount(y_train, minlength=len(task.classes))
        weight = torch.as_tensor(len(y_train) / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)
    return lambda out, y: F.cross_entropy(out, y, weight=None if weight is None else weight.to(out.device))


def _val_key(m, kind):
    """Higher is better: balanced accuracy, or −MAE (the authors' choice of epoch, finetune.py:474)."""
    return m["balanced_accuracy"] if kind == "classification" else -m["mae"]


def fit_split(encoder, task, split, scans, cfg, seed, device="cpu", precision="fp32", per_batch=64,
              label="fine-tuning", masked_networks=None):
    """Fine-tune a copy of `encoder` (never `encoder` itself: every split starts from the checkpoint)
    on split = (train, val, test) subject indices; choose the epoch on val; score test once."""
    train, val, test = split
    run = _Run(encoder, task, train, scans, cfg, seed, device, precision, masked_networks)
    curves, best, wait = {"train_loss": [], "val": []}, None, 0
    progress = Progress(cfg.epochs, f"  {label}", "epochs")
    for epoch in range(cfg.epochs):
        curves["train_loss"].append(run.epoch(epoch, train))
        # "random": their loader draws the val scan and crop anew every epoch (dataset.py:256, :268)
        val_plan = eval_plan(scans, task, run.by_subject, val, cfg.crops if cfg.eval_crops == "even" else 1,
                             cfg.eval_crops, run.crop_len, seeding.rng(seed, EVAL_STREAM, epoch))
        m_val = score(run.predict(val_plan, len(val), per_batch), task.y[val], task, run.target)
        curves["val"].append(m_val)
        progress.update(epoch + 1)
        if best is None or _val_key(m_val, task.kind) > _val_key(best[1], task.kind):
            best, wait = (epoch, m_val, copy.deepcopy(run.model.state_dict())), 0   # a copy, not references
        else:
            wait += 1
            if wait >= cfg.patience:
                break
    epochs_run = len(curves["val"])
    if cfg.keep == "best":
        run.model.load_state_dict(best[2])
        chosen = best[:2]
    else:
        chosen = (epochs_run - 1, curves["val"][-1])
    test_plan = eval_plan(scans, task, run.by_subject, test, cfg.crops, cfg.eval_crops, run.crop_len,
                          seeding.rng(seed, EVAL_STREAM, cfg.epochs))
    p_test = run.predict(test_plan, len(test), per_batch)
    res = {"n_train": int(len(train)), "n_val": int(len(val)), "n_test": int(len(test)), "lr": run.lr,
           "epoch": int(chosen[0]), "epochs_run": epochs_run, "val": chosen[1],
           "test": score(p_test, task.y[test], task, run.target), "curves": curves}
    if task.kind == "classification":
        k = len(task.classes)
        res["confusion"] = np.bincount(task.y[test] * k + p_test.argmax(1), minlength=k * k).reshape(k, k).tolist()
    return res


class _Run:
    """One split's model, optimizer, loss and inputs; `epoch(e, train)` trains one epoch."""

    def __init__(self, encoder, task, train, scans, cfg, seed, device, precision, masked_networks=None):
        self.task, self.scans, self.cfg, self.seed = task, scans, cfg, seed
        self.dev, self.device, self.precision = torch.device(device), device, precision
        self.crop_len = encoder.config.crop_len
        classify = task.kind == "classification"
        self.target = (0.0, 1.0) if classify else (float(task.y[train].mean()), float(task.y[train].std()) or 1.0)
        self.y = torch.as_tensor(task.y if classify else (task.y - self.target[0]) / self.target[1],
                                 dtype=torch.long if classify else torch.float32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seeding.torch_seed(seed, HEAD_STREAM))
            head = make_head(2 * encoder.config.dim, len(task.classes) if classify else 1, cfg.head,
                             cfg.hidden_dims, cfg.dropout)
        self.model = FineTuned(copy.deepcopy(encoder), head, masked_networks).to(self.dev)
        self.model.encoder.grad_checkpointing = cfg.grad_checkpoint
        self.lr = cfg.lr * (cfg.batch_size / 256 if cfg.lr_scale == "batch" else 1.0)
        self.opt = torch.optim.AdamW(param_groups(self.model, cfg, self.lr))
        self.loss_fn = _loss_fn(cfg, task, task.y[train])
        self.by_subject = subject_scans(task)
        self.gen = torch.Generator(self.dev)

    def epoch(self, epoch, train):
        """One pass over the train subjects in batches -> mean train loss."""
        cfg = self.cfg
        for g in self.opt.param_groups:                  # cosine over epochs, no warm-up (finetune.py:247)
            g["lr"] = lr_at(epoch, cfg.epochs, 0, g["base_lr"])
        self.model.encoder.requires_grad_(epoch >= cfg.freeze_epochs)
        rng = seeding.rng(self.seed, BATCH_STREAM, epoch)
        self.gen.manual_seed(seeding.torch_seed(self.seed, BATCH_STREAM, epoch))
        order = rng.permutation(train)
        batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        if len(batches) > 1 and len(batches[-1]) < 2:    # BatchNorm cannot train on one sample
            batches.pop()
        self.model.train()
        losses = []
        for subj in batches:
            x = train_crops(self.scans, self.task, self.by_subject, subj, self.crop_len, rng, self.gen, self.dev)
            with runtime.autocast(self.dev, self.precision):
                out = self.model(x).float()                                      # (b, k)
            loss = self.loss_fn(out if self.task.kind == "classification" else out[:, 0], self.y[subj].to(self.dev))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.opt.step()
            losses.append(loss.item())
        return float(np.mean(losses))

    def predict(self, plan, n_subjects, per_batch):
        return predict(self.model, self.scans, plan, n_subjects, self.crop_len, self.device, self.precision, per_batch)


def run_finetune(encoder, task, scans, seeds, ratios, cfg, device="cpu", precision="fp32", per_batch=64,
                 label="fine-tuned", masked_networks=None):
    """fit_split on every seed's subject split (the linear probe's) -> {"summary", "repeats"} as run_probe.
    Prints a line per repeat with its time and the ETA of the rest."""
    repeats, t0 = [], time.time()
    for i, seed in enumerate(seeds):
        res = fit_split(encoder, task, split_subjects(task, ratios, seed), scans, cfg, seed, device, precision,
                        per_batch, f"{label}, split {i + 1}/{len(seeds)}", masked_networks)
        repeats.append({"seed": int(seed), **res})
        done = time.time() - t0
        print(f"  {label}, split {i + 1}/{len(seeds)} (seed {seed}): {_brief(res, task.kind)}, epoch "
              f"{res['epoch'] + 1} of {res['epochs_run']} run; {done:.0f} s, "
              f"ETA {done / (i + 1) * (len(seeds) - i - 1):.0f} s", flush=True)
    summary = {}
    for m in METRICS[task.kind]:
        v = np.array([r["test"][m] for r in repeats], dtype=float)
        summary[m] = ({"mean": float(np.nanmean(v)), "std": float(np.nanstd(v))} if np.isfinite(v).any()
                      else {"mean": float("nan"), "std": float("nan")})
    out = {"summary": summary, "repeats": repeats}
    if task.kind == "classification":
        out["confusion"] = np.sum([r["confusion"] for r in repeats], axis=0).tolist()
    return out


def _brief(res, kind):
    t = res["test"]
    return (f"test balanced acc {100 * t['balanced_accuracy']:.1f} %" if kind == "classification"
            else f"test R² {t['r2']:.3f}, MAE {t['mae']:.3g}")


def check_finetunable(task, ratios, seeds, batch_size):
    """Every seed's split must hold 2 subjects of each class in train, val and test, and at least
    --batch-size train subjects: clear errors before any training."""
    for seed in seeds:
        parts = split_subjects(task, ratios, seed)
        if task.kind == "classification":
            for name, part in zip(("train", "val", "test"), parts):
                counts = np.bincount(task.y[part], minlength=len(task.classes))
                if counts.min() < 2:
                    c = task.classes[int(counts.argmin())]
                    raise ValueError(f"class '{c}' of task '{task.name}' has {counts.min()} subject(s) in the {name} "
                                     f"split of seed {seed}; fine-tuning needs at least 2 of each class in every "
                                     f"split (merge or drop the class, or change --split)")
        if batch_size > len(parts[0]):
            raise ValueError(f"--batch-size {batch_size} is larger than the train split of task '{task.name}' "
                             f"({len(parts[0])} subjects for seed {seed}); lower it to at most {len(parts[0])}")

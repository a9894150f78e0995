"""The training loop of self-distillation pretraining: one optimizer step, and what the loop logs and
checkpoints between steps (SPEC §6-8). train.py is the driver that sets it up and calls `train_loop`.

- `param_groups` says which parameters AdamW weight-decays (SPEC §8).

- `Trainer` holds the student, the EMA teacher (losses.py), AdamW and the batch source;
  `Trainer.step(i)` draws step i's batch and slice mask, evaluates the schedules (schedules.py) and
  makes one update: losses, backward, grad-norm clip, AdamW, EMA.
- `LogWindow` sums each step's losses and monitors on the device (nothing read back or copied in
  per step: tests/test_runtime.py traces it), notes the first step at which a term went non-finite,
  and at a log step averages over the window and the processes.
- `RunFiles` is what rank 0 writes into --out: config.json, log.jsonl, teacher.pt and state.pt.
- `train_loop` runs the steps, with a log line every --log-every and a checkpoint every --ckpt-every.

    python bench/train_step.py --preset demo     # time one step
    python -m pytest -q tests/test_train.py tests/test_authors.py
"""
import json
import math
import os
import sys
import time
from dataclasses import asdict

import torch
import torch.distributed as dist
import torch.nn as nn

from losses import build_models, compute_losses, ema_update
from machine import runtime, seeding
from machine.fileio import atomic_write
from masking import make_mask
from training import checkpoint
from training.monitor import collapse_warning
from training.schedules import ema_momentum_at, lr_at, ttr_weight_at, warmup_steps, weight_decay_at

WEIGHT_DECAY_POLICIES = ("all", "dino")


def param_groups(model, policy="all"):
    """AdamW parameter groups.

    "all" (the published run): every parameter is weight-decayed, biases, norms, embeddings and
    tokenizer included. "dino": no decay on biases, norm weights, LayerScale and the CLS / mask /
    network embeddings (DINO's convention), decay on the rest."""
    if policy not in WEIGHT_DECAY_POLICIES:
        raise ValueError(f"unknown weight-decay policy {policy!r}; choose one of {WEIGHT_DECAY_POLICIES}")
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        plain = policy == "dino" and (p.ndim <= 1 or leaf.endswith("bias") or "norm" in name
                                      or leaf in ("cls_token", "mask_token", "network_embed"))
        (no_decay if plain else decay).append(p)
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "apply_wd": False, "weight_decay": 0.0}]


class Trainer:
    """Student, EMA teacher, optimizer and batch source; `step(i)` is one optimizer step (SPEC §6-8).

    All randomness of a step is drawn from generators re-seeded from (seed, step, rank), and the batch
    source resumes from counters, so `state_dict()` + the step number resume a run exactly."""

    def __init__(self, cfg, enc_cfg, network_map, batches, total, device, rank=0, world=1, compile_backend="inductor",
                 absent_networks=None):
        self.cfg, self.batches, self.total, self.device, self.rank, self.world = cfg, batches, total, device, rank, world
        self.local_b = cfg.batch_size // world
        self.warmup = warmup_steps(total, cfg.warmup_epochs, cfg.epochs)
        # L_TTR's window, in epochs as theirs; inf: the whole run at full weight (ttr_weight_at(step, inf) = weight)
        self.ttr_steps = math.inf if math.isinf(cfg.ttr_epochs) else warmup_steps(total, cfg.ttr_epochs, cfg.epochs)
        self.peak_lr = cfg.lr * cfg.batch_size / 256
        self.student, self.teacher = build_models(enc_cfg, network_map, cfg.seed)
        self.student.encoder.grad_checkpointing = cfg.grad_checkpoint   # the teacher has no backward
        self.student.to(device)
        self.teacher.to(device)
        # fused: one pass over each weight per step (CPU and CUDA), instead of ~10 elementwise ops
        self.opt = torch.optim.AdamW(param_groups(self.student, cfg.weight_decay_params), lr=self.peak_lr, fused=True)
        self.model = self.student
        if world > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.student, device_ids=[device.index] if device.type == "cuda" else None)
        self.precision, self.precision_reason = runtime.resolve_precision(cfg.precision, device)
        self.compiled, self.compile_reason = runtime.resolve_compile(cfg.compile, device)
        # the forwards are compiled, the modules are not: state_dict keys and the EMA stay as they are.
        # The Triton kernels run inside as graph breaks (kernels/__init__.py says why)
        # (compile_backend: "aot_eager" traces without generating code, for CPU checks in seconds)
        self.fwd_student, self.fwd_teacher = ((torch.compile(self.model, backend=compile_backend),
                                               torch.compile(self.teacher, backend=compile_backend))
                                              if self.compiled else (self.model, self.teacher))
        # networks of atlases the data lack (data/atlases.py): masked in every patch, student and teacher,
        # and outside every loss (L_TTR without their summaries, L_Tok never at their tokens)
        self.absent = None
        if absent_networks:
            self.absent = torch.zeros(self.student.encoder.n_networks, dtype=torch.bool, device=device)
            self.absent[list(absent_networks)] = True
            self.fwd_student, self.fwd_teacher = (AbsentNetworks(f, self.absent, self.student.encoder)
                                                  for f in (self.fwd_student, self.fwd_teacher))
        self.t_params, self.s_params = list(self.teacher.parameters()), list(self.student.parameters())
        self.mask_gen = torch.Generator(device=device)  # slice masks drawn on the device: no host-device copy

    def masked_at(self, step):
        """Is step `step`'s batch slice-masked? A draw from (seed, stream 1, step), with probability
        --mask-prob: the same on every process and after a resume."""
        return bool(seeding.rng(self.cfg.seed, 1, step).random() < self.cfg.mask_prob)

    def step(self, step):
        """One optimizer step + EMA update at step `step`: draws the batch and the mask, evaluates the
        schedules, then `update`. Returns update's dict plus the python values masked, lr, wd, ema, ttr_w."""
        cfg, total, b = self.cfg, self.total, self.local_b
        sched = dict(lr=lr_at(step, total, self.warmup, self.peak_lr),
                     wd=weight_decay_at(step, total, cfg.weight_decay, cfg.weight_decay_end),
                     ema=ema_momentum_at(step, total, cfg.ema_momentum),
                     ttr_w=ttr_weight_at(step, self.ttr_steps, cfg.ttr_weight))
        x1, x2 = self.batches.next_batch(b)                           # (b, C, T') each
        N, P = self.student.encoder.n_networks, self.student.encoder.n_patches
        masked = self.masked_at(step)
        if masked:
            self.mask_gen.manual_seed(seeding.torch_seed(cfg.seed, 2, step, self.rank))
            mask = make_mask(cfg.mask_type, 2 * b, N, P, generator=self.mask_gen, device=self.device)  # (2b, N, P)
        elif self.world > 1:  # an all-False mask keeps the mask embedding in DDP's graph (no find_unused_parameters)
            mask = torch.zeros(2 * b, N, P, dtype=torch.bool, device=self.device)
        else:
            mask = None
        if mask is not None and self.absent is not None:   # L_Tok's positions: never an absent network
            mask = mask & ~self.absent[None, :, None]
        r = self.update(x1, x2, mask, masked=masked, **sched)
        r.update(masked=masked, **sched)
        return r

    def update(self, x1, x2, mask, lr, wd, ema, ttr_w, masked=None):
        """The optimizer step on given views (b, C, T'), mask (2b, N, P) or None and schedule values:
        losses, backward, grad-norm clip, AdamW with (lr, wd), EMA with momentum `ema`. `masked`: as in
        compute_losses (default: a mask is given). Returns the compute_losses dict (device tensors, no
        sync) plus grad_norm."""
        for g in self.opt.param_groups:
            g["lr"] = lr
            if g["apply_wd"]:
                g["weight_decay"] = wd
        r = compute_losses(self.fwd_student, self.fwd_teacher, x1, x2, mask, ttr_w, self.cfg.tok_weight,
                           self.cfg.eps, self.precision, masked, self.cfg.cls_weight)
        self.opt.zero_grad(set_to_none=True)
        r["loss"].backward()
        r["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.s_params, self.cfg.clip_grad, foreach=True)
        self.opt.step()
        ema_update(self.t_params, self.s_params, ema)
        return r

    def init_from(self, states):
        """Start student and teacher from pretrained weights (checkpoint.load_init): encoders and, where
        the file has it, the projection head; the optimizer stays fresh."""
        for net, st in ((self.student, states["student"]), (self.teacher, states["teacher"])):
            net.encoder.load_state_dict(st["encoder"])
            if st.get("head") is not None:
                net.head.load_state_dict(st["head"])

    def state_dict(self):
        return {"student": self.student.state_dict(), "teacher": self.teacher.state_dict(),
                "optimizer": self.opt.state_dict(), "sampler": self.batches.state_dict()}

    def load_state_dict(self, state):
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.opt.load_state_dict(state["optimizer"])
        self.batches.load_state_dict(state["sampler"])


class AbsentNetworks:
    """A student or teacher forward that masks the absent networks (bool (N,)) in all P patches, whatever
    else is masked, and leaves their summaries out of z_net, so L_TTR never sees them."""

    def __init__(self, forward, absent, encoder):
        self.forward, self.absent, self.encoder = forward, absent, encoder

    def __call__(self, x, mask=None, with_tokens=False):
        hide = self.encoder.network_mask(x.shape[0], self.absent, x.device)        # (VB, N, P)
        out = self.forward(x, hide if mask is None else mask | hide, with_tokens)
        out["z_net"] = out["z_net"][:, ~self.absent]                            # (VB, N_present, p)
        return out


LOGGED = ("loss", "cls", "ttr", "tok", "comp", "expa", "std_s", "std_t", "cos_t", "grad_norm")
# checked for non-finite values, a component first: "non-finite ttr" says more than "non-finite loss"
WATCHED = ("cls", "ttr", "tok", "loss", "grad_norm")


class NonFiniteLoss(RuntimeError):
    """A loss or the gradient norm went NaN/inf: the run stops before it writes another checkpoint."""


class LogWindow:
    """The losses and monitors of the steps since the last log line, summed on the device.

    `add` costs no host sync and no host-to-device copy; `record` (at a log step, on every process)
    reads the window back (two syncs: check_finite's and the sums'), averages over the window's
    steps and the processes, and returns the log.jsonl record. `check_finite` raises NonFiniteLoss,
    on every process together, once any watched term of any step went non-finite."""

    def __init__(self, device, world, total, out):
        self.world, self.total, self.out = world, total, out
        self.sums = torch.zeros(len(LOGGED) + 1, device=device)   # (+ the number of masked batches)
        # the first non-finite step of every LOGGED term (-1: none yet); check_finite picks the WATCHED
        # ones on the host, as indexing here with a Python list would copy the indices to the GPU every step
        self.first_bad = torch.full((len(LOGGED),), -1, dtype=torch.long, device=device)
        self.watched = [LOGGED.index(k) for k in WATCHED]
        self.n, self.started, self.seconds = 0, time.time(), 0.0   # steps and wall time: window, whole run

    @torch.no_grad()
    def add(self, step, r):
        vals = torch.stack([r[k].detach().float() for k in LOGGED])
        self.sums[:-1] += vals
        self.sums[-1] += float(r["masked"])
        bad = ~torch.isfinite(vals)                                 # (len(LOGGED),)
        self.first_bad.copy_(torch.where((self.first_bad < 0) & bad, step, self.first_bad))
        self.n += 1

    def check_finite(self):
        fb = self.first_bad.clone()
        if self.world > 1:  # every process must stop together
            fb = torch.where(fb < 0, self.total, fb)
            dist.all_reduce(fb, op=dist.ReduceOp.MIN)
            fb = torch.where(fb == self.total, -1, fb)
        fb = fb.tolist()                                            # the one sync
        fb = [fb[j] for j in self.watched]                          # in WATCHED's order
        if max(fb) >= 0:
            i = min((s, i) for i, s in enumerate(fb) if s >= 0)[1]
            raise NonFiniteLoss(f"non-finite {WATCHED[i]} at step {fb[i] + 1}: stopping. The last good "
                                f"checkpoint in {self.out} is intact; try a lower --lr or check the data")

    def record(self, done, r, batch_size):
        """The window's means after `done` steps, with step `done`'s schedule values in `r`; resets."""
        self.check_finite()
        if self.world > 1:
            dist.all_reduce(self.sums)
            self.sums /= self.world
        a = self.sums.tolist()
        rec = {k: v / self.n for k, v in zip(LOGGED, a)}
        rec["tok"] = a[LOGGED.index("tok")] / max(1.0, a[-1])  # L_Tok averaged over the masked batches only
        dt = time.time() - self.started
        self.seconds += dt
        rec.update(step=done, lr=r["lr"], wd=r["wd"], ema=r["ema"], ttr_w=r["ttr_w"],
                   samples_per_s=self.n * batch_size / dt, s_per_step=dt / self.n)
        self.sums.zero_()
        self.started, self.n = time.time(), 0
        return rec


class RunFiles:
    """What rank 0 writes into --out (formats in checkpoint.py): config.json, log.jsonl (one record per
    log step), teacher.pt (the model) and state.pt (everything --resume needs). Holds the run's log and
    its subject separation, which every checkpoint stores."""

    def __init__(self, out, rank):
        self.out, self.rank = out, rank
        self.state_path, self.teacher_path = os.path.join(out, "state.pt"), os.path.join(out, "teacher.pt")
        self.jsonl = os.path.join(out, "log.jsonl")
        self.log, self.separation = [], {}

    def write_config(self, cfg, enc_cfg, tr, network_map):
        """config.json; remembers what every checkpoint stores beside the weights."""
        self.config, self.enc_cfg, self.tr, self.network_map = asdict(cfg), asdict(enc_cfg), tr, network_map
        # what --precision/--compile resolved to on this machine, and why; stored beside the config (not in
        # it, so that a resume on another machine resolves "auto" afresh)
        self.machine = {"device": str(tr.device), "precision": tr.precision, "precision_reason": tr.precision_reason,
                        "compile": tr.compiled, "compile_reason": tr.compile_reason}
        if self.rank == 0:
            os.makedirs(self.out, exist_ok=True)
            with atomic_write(os.path.join(self.out, "config.json"), "w") as f:
                json.dump({"train": self.config, "encoder": self.enc_cfg, "runtime": self.machine}, f, indent=2)

    def rewrite_log(self):
        if self.rank == 0:
            with atomic_write(self.jsonl, "w") as f:  # rewritten from the checkpoint's log on resume: no duplicates
                f.writelines(json.dumps(r) + "\n" for r in self.log)

    def add_log(self, rec, eta):
        """One log step: into the log, onto the console and into log.jsonl."""
        self.log.append(rec)
        if self.rank == 0:
            print(f"step {rec['step']:>6}/{self.tr.total} | loss {rec['loss']:+.3f} cls {rec['cls']:+.3f} "
                  f"ttr {rec['ttr']:+.3f} tok {rec['tok']:+.3f} comp {rec['comp']:.3f} expa {rec['expa']:.3f} | "
                  f"lr {rec['lr']:.2e} ema {rec['ema']:.4f} | std s {rec['std_s']:.3f} t {rec['std_t']:.3f} "
                  f"cos_t {rec['cos_t']:.3f} | {rec['samples_per_s']:.1f} samples/s, {rec['s_per_step']:.2f} s/step, "
                  f"ETA {eta / 60:.1f} min", flush=True)
            with open(self.jsonl, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def say(self, *a):
        """Print on rank 0 (every process runs the same code; one of them speaks)."""
        if self.rank == 0:
            print(*a, flush=True)

    def warn(self, message):
        """Print `message` (if any) on rank 0 -> whether there was one."""
        if message and self.rank == 0:
            print(message, file=sys.stderr, flush=True)
        return bool(message)

    def save(self, step, window):
        """teacher.pt and state.pt after `step` steps; never over a good checkpoint with diverged weights."""
        window.check_finite()
        if self.rank == 0:  # the sampler state is the same on every process (counters); the other
            # randomness is re-seeded from (seed, step, rank) every step, so nothing else is needed
            checkpoint.save_state(self.state_path, config=self.config, encoder_config=self.enc_cfg, step=step,
                                  total_steps=self.tr.total, log=self.log, separation=self.separation,
                                  runtime=self.machine, network_map=torch.as_tensor(self.network_map),
                                  **self.tr.state_dict())
            checkpoint.save_teacher(self.teacher_path, self.tr.teacher.encoder, self.network_map, step,
                                    {**self.config, "runtime": self.machine})
            print(f"checkpoint: step {step} -> {self.teacher_path}, {self.state_path}", flush=True)


def train_loop(tr, files, start, log_every, ckpt_every):
    """Steps start..total: a log line every `log_every` steps and at the end, a checkpoint every
    `ckpt_every` steps (the last one is the caller's, after the final evaluation)."""
    window, warned = LogWindow(tr.device, tr.world, tr.total, files.out), False
    for step in range(start, tr.total):
        r = tr.step(step)
        window.add(step, r)
        done = step + 1
        if done % log_every == 0 or done == tr.total:
            rec = window.record(done, r, tr.cfg.batch_size)
            files.add_log(rec, eta=(tr.total - done) * window.seconds / (done - start))
            warned = warned or files.warn(collapse_warning(rec))
        if done % ckpt_every == 0 and done != tr.total:
            files.save(done, window)
    return window

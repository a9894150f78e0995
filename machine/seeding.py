"""Seeds derived from a run's seed and counters: one rule, np.random.SeedSequence, everywhere.

A random stream that must be the same on every process and after a resume is named by integers,
e.g. (seed, stream, step, rank), and drawn from np.random.SeedSequence(seed, spawn_key=(stream,
step, rank)): numpy's own way to derive independent child streams, well mixed (nearby keys give
unrelated streams) and stable across runs and platforms. The spawn key, unlike a plain entropy
list, keeps keys of different lengths apart: SeedSequence([s, 1, t]) and SeedSequence([s, 1, t, 0])
are the same sequence (short entropy is zero-padded), so a batch stream (s, 1, step, rank 0) would
repeat a mask stream (s, 1, step).

- `rng(*key)`: a numpy Generator (e.g. Trainer.masked_at's per-step "mask this step?" draw).
- `torch_seed(*key)`: an int for torch.Generator.manual_seed (training/batches.py's epoch order and
  batch draws, training/trainer.py's slice masks), so torch generators on any device follow the same rule.

No SPEC section (SPEC §8 only asks for reproducible runs).

    python -c "from machine import seeding; print(seeding.torch_seed(0, 1, 5))"
"""
import numpy as np


def rng(seed, *stream) -> np.random.Generator:
    """A numpy Generator for the run's seed and the stream's integers (stream id, counters, ...)."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=tuple(int(k) for k in stream)))


def torch_seed(seed, *stream) -> int:
    """A seed in [0, 2^62) for torch.Generator.manual_seed, from the run's seed and the stream."""
    return int(rng(seed, *stream).integers(2 ** 62))

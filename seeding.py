"""Seeds derived from a run's seed and counters: one rule, np.random.SeedSequence, everywhere.

A random stream that must be the same on every process and after a resume is keyed by integers,
e.g. (seed, stream, step, rank), and drawn from a generator seeded by np.random.SeedSequence of that
key: well mixed, so nearby keys give unrelated streams, and stable across runs and platforms.

- `rng(*key)`: a numpy Generator (e.g. train.py's per-step "mask this step?" draw).
- `torch_seed(*key)`: an int for torch.Generator.manual_seed (scans.TrainBatches' epoch order and
  batch draws, train.py's masks), so torch generators on any device follow the same rule.

No SPEC section (SPEC §8 only asks for reproducible runs).

    python -c "import seeding; print(seeding.torch_seed(0, 1, 5))"
"""
import numpy as np


def rng(*key) -> np.random.Generator:
    """A numpy Generator for the integer key (seed, stream, counter, ...)."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def torch_seed(*key) -> int:
    """A seed in [0, 2^62) for torch.Generator.manual_seed, from the integer key."""
    return int(rng(*key).integers(2 ** 62))

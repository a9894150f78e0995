"""Judging a pretrained model: frozen features, the linear probe, and the reports (SPEC §9).
probe.py, embed.py and finetune.py drive it.

Read in this order:

- `options.py`       the model and data options probe.py and embed.py share, and the built-in cohort
- `setup.py`         what a probe or fine-tuning run shares: split/task options, model, data, labels
- `features.py`      frozen features per scan (teacher, FC, random encoder) and their on-disk cache
- `linear_probe.py`  fit and score a linear probe on one split, repeats, paired differences
- `report.py`        tables, JSON and plots of the probe results
- `by_network.py`    which networks carry a label: probes with every network but one, and one, masked
- `finetune.py`      fine-tuning the encoder + a head on one split and on every split (finetune.py's loop)

Imports the method (encoder.py), data/ and machine/; never a command.
"""

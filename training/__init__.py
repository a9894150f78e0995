"""The training machinery around the method: options, schedules, batches, the optimizer step and loop,
run files, monitors and checkpoints (SPEC §6-8). train.py drives it; losses.py is what it optimises.

Read in this order:

- `config.py`      every option of a run and its default (TrainConfig), the presets, the command line
- `schedules.py`   lr, weight decay, EMA momentum and the L_TTR weight as pure functions of the step
- `batches.py`     the pretraining batch source: two cropped, augmented views of one scan per subject
- `trainer.py`     one optimizer step (Trainer), what a log step records, what --out holds, the loop
- `monitor.py`     is the run learning: subject separation, collapse and warm-up warnings, curves
- `checkpoint.py`  the one place checkpoints are read and written, the authors' included
- `release.py`     the released model by name (`--ckpt hf:SamGijsen/Brain-Semantoks`), through huggingface_hub's cache

Imports the method (encoder.py, losses.py, masking.py), data/ and machine/; never a command.
"""

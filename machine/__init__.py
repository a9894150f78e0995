"""The machine: what depends on where a run happens rather than on the method.

Read in this order:

- `runtime.py`   device, DDP setup, native bf16 on the CPU (AVX512_BF16/AMX), `--precision`, `--compile`, CPU tweaks
- `progress.py`  the progress line of every long job (rate and ETA)
- `fileio.py`    the one atomic write and the one file identity key (cache keys)
- `seeding.py`   the one seed rule: independent streams named by (seed, stream, counters)
- `cli.py`       the commands' error convention: a bad input is one line on stderr and exit code 2

The bottom layer: nothing here imports another folder of the project.
"""

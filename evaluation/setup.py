"""What one evaluation run shares, whether it probes (probe.py) or fine-tunes (finetune.py): the
subject-split and task options, the frozen model, the data and the labels, loaded once (SPEC §9).

- `add_task_arguments(p)`: --labels, --task-type, --bins, --repeats, --seeds, --split.
- `prepare(args)` -> `Setup`: every option checked, then the teacher (training/checkpoint.py), the data
  (options.load_data) and where the labels are; every error before any work.
- `load_task` / `load_all_tasks`: one label column, or every column (--task all), as splittable Tasks
  (data/labels.py).
"""
from dataclasses import dataclass
from pathlib import Path

from data import labels
from data.load import is_h5
from data.scans import Scans
from encoder import Encoder
from evaluation import options
from machine import runtime
from training import checkpoint, release

ALL = "all"                           # --task all: every label column in one run


def add_task_arguments(p):
    """The label and subject-split options probe.py and finetune.py share (the splits pair their numbers)."""
    p.add_argument("--labels", help="CSV/TSV, one column per task; optional subject/participant_id column "
                                    "(default for an .h5: its own label datasets, e.g. --task sex_bi)")
    p.add_argument("--task-type", default="auto", choices=["auto", "classification", "regression"],
                   help="auto: classes when at most 10 distinct integer/string values, else regression "
                        "(default %(default)s)")
    p.add_argument("--bins", type=int, help="bin a continuous target into this many quantile classes (e.g. 3 "
                                            "for age tertiles), to read it as balanced accuracy")
    p.add_argument("--repeats", type=int, default=10, help="random subject splits, seeds 0..repeats-1; fewer "
                                                           "runs faster, more narrows the std (default %(default)s)")
    p.add_argument("--seeds", help="comma-separated split seeds (overrides --repeats)")
    p.add_argument("--split", default="4:1:8", help="train:val:test ratio over subjects (default %(default)s)")


def check_options(args):
    """Validate the options that do not need any file."""
    try:
        ratios = tuple(float(r) for r in args.split.split(":"))
    except ValueError:
        ratios = ()
    if len(ratios) != 3 or min(ratios) <= 0:
        raise ValueError(f"--split must be three positive numbers train:val:test, e.g. 4:1:8 (got {args.split!r})")
    if args.seeds is not None:
        seeds = _seeds(args.seeds)
    else:
        if args.repeats < 1:
            raise ValueError("--repeats must be at least 1")
        seeds = list(range(args.repeats))
    baselines = parse_baselines(args.baselines)
    options.check_data_arguments(args)
    if args.bins is not None and args.bins < 2:
        raise ValueError("--bins must be at least 2")
    if args.task == ALL and args.task_type != "auto":
        raise ValueError("--task all decides each column's type itself (--bins k still bins the continuous ones); "
                         "--task-type applies to a single task")
    if args.out is not None and Path(args.out).suffix.lower() != ".json":
        raise ValueError(f"--out {args.out}: expected a name ending in .json (the PNG is written beside it, "
                         f"with .png)")
    if (args.data is None) != (args.labels is None) and not (args.data and is_h5(args.data)):
        raise ValueError("--data and --labels go together (leave both out for the synthetic probe cohort; "
                         "an .h5 file in the authors' layout carries its own labels)")
    return ratios, seeds, baselines


def parse_baselines(text, known=("fc", "random")):
    """--baselines "fc,random" -> ["fc", "random"]; "none" -> []."""
    baselines = [b.strip().lower() for b in text.split(",") if b.strip()]
    baselines = [] if baselines == ["none"] else baselines
    bad = [b for b in baselines if b not in known]
    if bad:
        raise ValueError(f"unknown baseline(s) {bad}; choose from {', '.join(known)}, or none")
    return baselines


def _seeds(text):
    """--seeds "0,3,7" -> [0, 3, 7]: non-negative (numpy seeds a split with them), each once (a seed
    given twice would be the same split counted as two repeats)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = None
    if not seeds:
        raise ValueError(f"--seeds must be comma-separated integers, e.g. 0,1,2 (got {text!r})")
    if min(seeds) < 0:
        raise ValueError(f"--seeds must be non-negative (got {min(seeds)})")
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ValueError(f"--seeds lists {', '.join(map(str, twice))} more than once; each seed is one split, "
                         f"so a repeated seed would count the same split twice")
    return seeds


@dataclass
class Setup:
    """What every task of one probe.py run shares: options, the frozen model, the data, the labels."""
    ratios: tuple
    seeds: list
    baselines: list
    device: str
    ckpt: Path
    encoder: Encoder
    meta: dict
    scans: Scans
    data_path: Path
    synthetic: bool
    labels_path: Path = None          # None: the .h5's own label datasets
    precision: str = "fp32"
    precision_reason: str = ""
    data: options.Data = None         # the data and how the model reads them (masked networks, crop length)
    home: Path = None                 # default folder of reports and the feature cache (checkpoint.output_home)


def prepare(args):
    """Options, model, data and labels path of a run -> Setup (every error before any work)."""
    ratios, seeds, baselines = check_options(args)
    device = str(runtime.resolve_device(args.device))
    ckpt = release.checkpoint_file(args.ckpt)   # hf:OWNER/NAME: the release in huggingface_hub's cache
    encoder, meta = checkpoint.load_teacher(args.ckpt, network_map=options.teacher_map(args.networks))
    data = options.load_data(args, encoder, meta)
    labels_path = (data.path.with_name("probe_labels.csv") if data.synthetic
                   else Path(args.labels) if args.labels else None)
    precision, why = runtime.resolve_precision(args.precision, device)
    return Setup(ratios, seeds, baselines, device, ckpt, encoder, meta, data.scans, data.path, data.synthetic,
                 labels_path, precision, why, data, release.output_home(args.ckpt))


def load_task(setup, name, task_type="auto", bins=None, table=None, continuous_only=False):
    """One label column (or .h5 label dataset) -> a splittable Task. continuous_only (--task all):
    --bins applies only to a column that would otherwise be a regression, and only the task that is
    probed (binned or not) is checked for splittability. table: the labels file, read once."""
    values, subjects, notes = labels.task_labels(name, setup.labels_path, setup.scans, table)
    task = labels.make_task(name, values, subjects, task_type, None if continuous_only else bins)
    if continuous_only and bins is not None and task.kind == "regression":
        task = labels.make_task(name, values, subjects, bins=bins)
    task.notes[:0] = notes
    labels.check_splittable(task, setup.ratios)
    return task


def load_all_tasks(args, setup):
    """--task all: every label column -> ({name: splittable Task}, {name: why it is skipped}), the
    labels file read once; every error here comes before any feature is extracted."""
    table = labels.read_labels(setup.labels_path) if setup.labels_path is not None else None
    names = labels.label_columns(setup.labels_path, setup.scans, table)
    if not names:
        raise ValueError(f"--task all: {setup.labels_path or setup.data_path} has no label columns")
    print(f"Tasks: {', '.join(names)} ({len(setup.seeds)} repeats of {args.split} subject splits each)")
    tasks, skipped = {}, {}
    for name in names:
        try:
            tasks[name] = load_task(setup, name, bins=args.bins, table=table, continuous_only=True)
        except ValueError as e:
            skipped[name] = str(e)
            print(f"  skipped '{name}': {e}")
    if not tasks:
        raise ValueError("--task all: no label column could be probed (reasons above)")
    return tasks, skipped


def cohort(setup):
    """How reports name the data."""
    return "SYNTHETIC probe cohort" if setup.synthetic else str(setup.data_path)


def out_path(args, setup, default_name):
    """--out, else `default_name` in the run's home: beside the checkpoint (a release's: runs/OWNER--NAME/)."""
    return Path(args.out) if args.out else setup.home / default_name

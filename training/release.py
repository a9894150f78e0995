"""The released model by name: `--ckpt hf:SamGijsen/Brain-Semantoks` (any command that reads a checkpoint).

`hf:OWNER/NAME[/FILE][@REVISION]` is fetched through huggingface_hub into its cache (the usual
~/.cache/huggingface/hub, or $HF_HUB_CACHE / $HF_HOME): downloaded once, then read from the cache;
with HF_HUB_OFFLINE=1 only the cache is used. @REVISION pins a branch, tag or commit. Without /FILE
the repository's one .pth (or .pt) file is the model; a YAML/JSON config file beside it (the authors'
config, e.g. for the attention heads, which no tensor shape shows) is read when there is one and
the checkpoint carries no config of its own.

checkpoint.py calls `resolve` wherever a checkpoint is read; nothing else here reads weights.
`checkpoint_file(spec)` is the local file a --ckpt names; `output_home(spec)` where a command writes
what belongs to it by default (beside the file; for a release runs/OWNER--NAME/, never inside the cache).

    python -m training.release hf:SamGijsen/Brain-Semantoks     # fetch (or find in the cache), print the path
"""
import os
import sys
from functools import lru_cache
from pathlib import Path

PREFIX = "hf:"
WEIGHTS = (".pth", ".pt")
CONFIGS = (".yaml", ".yml", ".json")


def is_release(spec) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def parse(spec):
    """'hf:owner/name/sub/file.pth@rev' -> ("owner/name", "sub/file.pth" or None, "rev" or None)."""
    body, _, revision = spec[len(PREFIX):].partition("@")
    parts = [p for p in body.split("/") if p]
    if len(parts) < 2 or (revision == "" and "@" in spec):
        raise ValueError(f"--ckpt {spec}: expected hf:OWNER/NAME[/FILE][@REVISION], e.g. hf:SamGijsen/Brain-Semantoks")
    return "/".join(parts[:2]), ("/".join(parts[2:]) or None), (revision or None)


def _download(repo, file, revision, cache_dir):
    """The repository's snapshot folder in the cache (only the weights and config files are fetched)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ValueError("--ckpt hf:...: needs the huggingface_hub package (pip install huggingface_hub)") from None
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    patterns = [file] if file else [f"*{s}" for s in WEIGHTS + CONFIGS]
    if file:
        patterns += [f"*{s}" for s in CONFIGS]
    # read here, at call time (huggingface_hub reads its environment once, on import)
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    cache_dir = cache_dir or os.environ.get("HF_HUB_CACHE") or None
    try:
        return Path(snapshot_download(repo, revision=revision, cache_dir=cache_dir, allow_patterns=patterns,
                                      local_files_only=offline))
    except RepositoryNotFoundError:
        raise ValueError(f"hf:{repo}: no such model repository on the Hugging Face Hub (or it is private)") from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub cannot be reached"
        raise ValueError(f"hf:{repo}{'@' + revision if revision else ''}: {why} and the model is not in the cache "
                         f"({cache_dir or 'the default huggingface_hub cache'}). Download it once with network "
                         f"access (python -m training.release hf:{repo}), or pass the local .pth file") from None
    except (HfHubHTTPError, OSError) as e:
        raise ValueError(f"hf:{repo}: could not fetch the model ({type(e).__name__}: {str(e).splitlines()[0]})") from None


@lru_cache(maxsize=8)   # one command resolves a name several times (path for the cache key, weights, config)
def resolve(spec, cache_dir=None):
    """hf:... -> (local path of the weights, the config file's dict or None)."""
    repo, file, revision = parse(spec)
    folder = _download(repo, file, revision, cache_dir)
    if file:
        path = folder / file
        if not path.is_file():
            raise ValueError(f"hf:{repo}: has no file {file}")
    else:
        found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.suffix in WEIGHTS)
        if len(found) != 1:
            raise ValueError(f"hf:{repo}: " + (f"holds several weight files ({', '.join(found)}); name one: "
                                               f"hf:{repo}/{found[0]}" if found else "holds no .pth or .pt file"))
        path = folder / found[0]
    return path, _config(folder)


def checkpoint_file(spec):
    """--ckpt -> the local file it names: itself, or for hf:OWNER/NAME[/FILE][@REV] the release's weights in
    the huggingface_hub cache."""
    return Path(resolve(spec)[0]) if is_release(spec) else Path(spec)


def output_home(spec):
    """Where a command writes by default what belongs to a checkpoint (reports, feature cache): beside the
    file, or for a release runs/<owner>--<name>/ (never inside the huggingface_hub cache)."""
    if is_release(spec):
        return Path("runs") / parse(spec)[0].replace("/", "--")
    return Path(spec).resolve().parent


def _config(folder):
    """The one YAML/JSON config file of the snapshot as a dict, or None (none, or several to choose from)."""
    found = sorted(p for p in folder.rglob("*") if p.suffix in CONFIGS and p.is_file())
    if len(found) != 1:
        return None
    text = found[0].read_text()
    try:
        if found[0].suffix == ".json":
            import json
            cfg = json.loads(text)
        else:
            import yaml
            cfg = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 -- a broken config file is the release's fault: say which
        raise ValueError(f"{found[0]}: cannot read the release's config file ({type(e).__name__}: {e})") from None
    return cfg if isinstance(cfg, dict) else None


if __name__ == "__main__":
    if len(sys.argv) != 2 or not is_release(sys.argv[1]):
        sys.exit("usage: python -m training.release hf:OWNER/NAME[/FILE][@REVISION]")
    try:
        p, c = resolve(sys.argv[1])
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(f"{p}" + (f"\nconfig: {sorted(c)}" if c else ""))

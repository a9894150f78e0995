"""Files the pipeline writes and recognises: the one atomic write and the one file identity key.

- `atomic_write(path, mode="wb")`: a context manager yielding a file open for writing; on a clean
  exit the data are fsynced and the file replaces `path` in one step (a temporary file in the same
  folder, then os.replace), so a crash or kill never leaves a half-written checkpoint, feature cache
  or synthetic cohort file behind, and readers see the old file or the new one. On an error the
  temporary file is removed and `path` is untouched.
- `check_writable(path, flag)`: an output that cannot be written is a clear error before any work.
- `file_key(paths, *extra)`: a short hash of each file's resolved path, size and modification time
  (plus `extra`), used as a cache key: it changes when a file is rewritten, without reading it.

No SPEC section: plumbing. Used wherever the pipeline writes a file or keys a cache (grep for
atomic_write and file_key).

    python -c "from machine.fileio import file_key; print(file_key(['README.md']))"
"""
import contextlib
import hashlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Write `path` all or nothing: `with atomic_write(p) as f: torch.save(obj, f)`."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable; not possible on every platform
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def check_writable(path, flag="--out", folder=False):
    """Raise a ValueError when `path` (a file, or with folder=True a folder) cannot be written: its
    nearest existing folder is a file, or a test file cannot be created there (read-only, no
    permission). Creates nothing that stays."""
    path = Path(path).expanduser().absolute()
    if path.is_dir() and not folder:
        raise ValueError(f"{flag} {path} is a folder; give a file name")
    if path.exists() and not path.is_dir() and folder:
        raise ValueError(f"{flag} {path} is a file; give a folder")
    base = path if folder else path.parent
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise ValueError(f"{flag} {path} cannot be written: {base} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as e:
        raise ValueError(f"{flag} {path} cannot be written: {base} is not writable ({e.strerror}); "
                         f"choose another {flag}") from None
    return path


def file_key(paths, *extra) -> str:
    """16 hex digits identifying the files `paths` as they are now (path, size, mtime) and `extra`."""
    h = hashlib.sha1()
    for p in paths:
        p = Path(p).resolve()
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    h.update(repr(extra).encode())
    return h.hexdigest()[:16]

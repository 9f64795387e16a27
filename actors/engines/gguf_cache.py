"""Content hashing and an atomic on-disk cache of GGUF models converted to HF format.

Dequantizing a GGUF file with transformers takes ~20-25 s on a small CPU box, so
the first load writes the dequantized weights (safetensors) plus config and
tokenizer files into ``<cache_dir>/<prefix>-<gguf_sha256[:16]>/`` and every later
load reads that directory with local files only.

Concurrency: a cache directory is built inside a private temporary directory in
the same parent and then renamed into place with one ``os.rename``, so a reader
never sees a half-written cache. Builders on one machine also serialise on an
advisory ``fcntl.flock`` lock file, so two executors starting at once convert the
model only once (the second one waits and then reuses the result). Without the
lock (non-POSIX), both convert and the loser of the rename discards its copy.

Integrity: the last file written is ``verinfer-cache.json``, a manifest with the
source GGUF hash and the SHA-256 of every other file in the directory.
`cache_dir_valid` re-hashes the files (~0.4 s for 540 MB) so a truncated or
tampered cache is detected and rebuilt rather than silently served.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

MANIFEST = "verinfer-cache.json"
MANIFEST_FORMAT = 1
_CHUNK = 8 << 20  # 8 MiB reads

# (realpath, dev, inode, size, mtime_ns, ctime_ns) -> hex sha256. Rehashing the
# 94 MB GGUF costs ~0.1 s, so an in-process memo is enough (no persistent cache).
_HASH_MEMO: dict[tuple[Any, ...], str] = {}


def _sha256_uncached(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """``$VERINFER_CACHE`` if set, else ``~/.cache/verinfer``."""
    env = os.environ.get("VERINFER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "verinfer"


def file_sha256(path: str | os.PathLike[str], memo: bool = True) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks.

    With memo=True the result is remembered in-process, keyed by the file's
    identity and size/mtime/ctime (timestamps are coarse, so callers that rewrite
    files within milliseconds and rehash must pass memo=False).
    """
    real = os.path.realpath(path)
    if not memo:
        return _sha256_uncached(real)
    st = os.stat(real)
    key = (real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    cached = _HASH_MEMO.get(key)
    if cached is None:
        cached = _HASH_MEMO[key] = _sha256_uncached(real)
    return cached


def _tree_files(root: Path) -> list[str]:
    """Regular files under root as sorted posix relative paths, skipping dot-files."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            full = Path(dirpath) / name
            if full.is_file():
                out.append(full.relative_to(root).as_posix())
    return sorted(out)


def tree_sha256(root: str | os.PathLike[str], exclude: tuple[str, ...] = ()) -> str:
    """Hex SHA-256 of a directory's content (names and bytes of every regular file).

    Defined as sha256 over, for each non-hidden file in sorted relative-path order,
    ``path_utf8 + b"\\0" + sha256(file_bytes) + b"\\n"``.
    """
    root_p = Path(root)
    h = hashlib.sha256()
    for rel in _tree_files(root_p):
        if rel in exclude:
            continue
        digest = file_sha256(root_p / rel, memo=False)
        h.update(rel.encode("utf-8") + b"\0" + bytes.fromhex(digest) + b"\n")
    return h.hexdigest()


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The cache manifest of a converted-model directory, or None if absent/unreadable."""
    try:
        with open(Path(path) / MANIFEST, "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def cache_dir_valid(path: str | os.PathLike[str], source_sha256: str | None = None, verify: bool = True) -> bool:
    """True iff `path` is a complete cache dir (for `source_sha256`, if given).

    With verify=True every file listed in the manifest is re-hashed and compared.
    """
    p = Path(path)
    if not p.is_dir():
        return False
    man = read_manifest(p)
    if man is None or man.get("format") != MANIFEST_FORMAT:
        return False
    if source_sha256 is not None and man.get("source_sha256") != source_sha256:
        return False
    files = man.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for rel, digest in files.items():
        f = p / rel
        if not f.is_file():
            return False
        if verify:
            # bypass the memo: the point is to detect on-disk changes
            if _sha256_uncached(f) != digest:
                return False
    return True


def _fsync_path(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_manifest(tmp: Path, meta: dict[str, Any]) -> None:
    files: dict[str, str] = {}
    for rel in _tree_files(tmp):
        if rel == MANIFEST:
            continue
        files[rel] = _sha256_uncached(tmp / rel)
        _fsync_path(tmp / rel)
    manifest = {"format": MANIFEST_FORMAT, **meta, "files": files, "created_unix": int(time.time())}
    with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    _fsync_path(tmp)


@contextlib.contextmanager
def _build_lock(lock_path: Path, enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    try:
        import fcntl
    except ImportError:  # non-POSIX: rely on the atomic rename alone
        yield
        return
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def ensure_cache_dir(
    final: str | os.PathLike[str],
    build: Callable[[Path], None],
    source_sha256: str,
    meta: dict[str, Any] | None = None,
    verify: bool = True,
    lock: bool = True,
) -> tuple[Path, bool]:
    """Return (path, built_now): a valid cache dir at `final`, building it if needed.

    `build(tmp_dir)` must write all files into tmp_dir; the manifest is added
    afterwards and the directory is renamed into place atomically.
    """
    final_p = Path(final)
    parent = final_p.parent
    parent.mkdir(parents=True, exist_ok=True)
    if cache_dir_valid(final_p, source_sha256, verify=verify):
        return final_p, False
    with _build_lock(parent / f".{final_p.name}.lock", lock):
        # somebody may have finished while we waited for the lock
        if cache_dir_valid(final_p, source_sha256, verify=verify):
            return final_p, False
        if final_p.exists():  # present but incomplete/corrupt/stale: move aside, drop
            trash = parent / f".trash-{final_p.name}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(final_p, trash)
                shutil.rmtree(trash, ignore_errors=True)
            except FileNotFoundError:
                pass
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final_p.name}-", dir=parent))
        try:
            build(tmp)
            _write_manifest(tmp, {"source_sha256": source_sha256, **(meta or {})})
            try:
                os.rename(tmp, final_p)
            except OSError:
                # lost a lock-less race: the winner's directory is complete
                if not cache_dir_valid(final_p, source_sha256, verify=verify):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
                return final_p, False
            _fsync_path(parent)
            return final_p, True
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

"""Encrypted model packages: HF-format weights at rest, opened only in memory.

A package is a directory:
  model.safetensors.sealed  the weights, AES-256-GCM (`protocols.sealing.seal_weights`)
  package.json              format, model id, registered model hash, sizes (not secret)
  config, generation config, tokenizer and chat-template files, in plaintext
The key is fresh for every package; the registry releases it only to attested
executors. The AAD binds the model id, the registered model hash and the digest
of the plaintext files, so neither the sealed weights of other weights nor a
swapped config or tokenizer opens. `open_package` decrypts into anonymous memory
(never a file) and returns tensors that are views of it: one copy of the weights.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import shutil
import struct
import tempfile
import uuid
from pathlib import Path

from protocols import sealing
from protocols.errors import ModelHashMismatch

from . import gguf_cache

PACKAGE_FORMAT = 1
PACKAGE_JSON = "package.json"
WEIGHTS_FILE = "model.safetensors"
SEALED_FILE = WEIGHTS_FILE + ".sealed"
CIPHER = "AES-256-GCM"


def files_digest(pkg_dir: str | os.PathLike[str]) -> str:
    """Digest of every plaintext file of a package (what the weights' AAD binds)."""
    return gguf_cache.tree_sha256(pkg_dir, exclude=(SEALED_FILE, PACKAGE_JSON))


def _read_exact(f, mv: memoryview) -> None:
    done = 0
    while done < len(mv):
        n = f.readinto(mv[done:])
        if not n:
            raise sealing.SealError(f"sealed weights are truncated ({done} of {len(mv)} bytes)")
        done += n


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_package(src_dir: str | os.PathLike[str], dest: str | os.PathLike[str], model_id: str,
                  model_hash: str) -> bytes:
    """Seal the HF-format model in `src_dir` into a package at `dest`; return the key.

    The package is built next to `dest` and renamed into place, replacing any
    previous package there.
    """
    src, dest = Path(src_dir), Path(dest)
    weights = src / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{src} holds no single {WEIGHTS_FILE} to seal")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    try:
        for p in sorted(src.iterdir()):
            if p.is_file() and not p.name.startswith(".") and p.name not in (WEIGHTS_FILE, gguf_cache.MANIFEST):
                shutil.copyfile(p, tmp / p.name)
        digest = files_digest(tmp)
        key = os.urandom(32)
        buf = bytearray(weights.stat().st_size)
        with open(weights, "rb") as f:
            _read_exact(f, memoryview(buf))
        header = sealing.seal_weights(buf, key, os.urandom(12), sealing.weights_aad(model_id, model_hash, digest))
        with open(tmp / SEALED_FILE, "wb") as f:
            f.write(header)
            f.write(buf)
            f.flush()
            os.fsync(f.fileno())
        size = len(buf)
        del buf
        manifest = {"format": PACKAGE_FORMAT, "model_id": model_id, "model_hash": model_hash, "cipher": CIPHER,
                    "weights": WEIGHTS_FILE, "sealed": SEALED_FILE, "plaintext_bytes": size,
                    "files_sha256": digest}
        with open(tmp / PACKAGE_JSON, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
        os.chmod(tmp, 0o755)
        trash = dest.parent / f".trash-{dest.name}-{uuid.uuid4().hex[:8]}"
        if dest.exists() or dest.is_symlink():
            os.rename(dest, trash)
        os.replace(tmp, dest)
        _remove(trash)
        return key
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_manifest(pkg_dir: str | os.PathLike[str]) -> dict:
    """A package's package.json (what it claims to hold; checked against the AAD on open)."""
    try:
        with open(Path(pkg_dir) / PACKAGE_JSON, "rb") as f:
            man = json.loads(f.read())
    except ValueError:
        raise sealing.SealError(f"{pkg_dir} is not a weights package (bad {PACKAGE_JSON})") from None
    if not isinstance(man, dict) or man.get("format") != PACKAGE_FORMAT or man.get("cipher") != CIPHER:
        raise sealing.SealError(f"{pkg_dir} is not a weights package of format {PACKAGE_FORMAT}")
    return man


def _anonymous_memory(size: int) -> mmap.mmap:
    """Private, page-aligned memory (as a mapped plaintext file would be), kept out of core dumps."""
    if hasattr(mmap, "MAP_ANONYMOUS"):
        mem = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    else:  # pragma: no cover - non-POSIX
        mem = mmap.mmap(-1, size)
    if hasattr(mmap, "MADV_DONTDUMP"):
        mem.madvise(mmap.MADV_DONTDUMP)
    return mem


def open_package(pkg_dir: str | os.PathLike[str], key: bytes, model_id: str, model_hash: str,
                 plaintext_digest: str | None = None) -> dict:
    """The package's weights as {name: tensor}, decrypted in memory.

    `model_id` and `model_hash` are what the registry records, not what the
    package claims: a package sealed for anything else raises ModelHashMismatch
    (its manifest says so) or SealError (its manifest lies, or bytes were changed).
    plaintext_digest: the digest of the plaintext files as the caller read them (so
    the AAD covers what was actually loaded); default: hash them now.
    """
    pkg = Path(pkg_dir)
    man = read_manifest(pkg)
    if man.get("model_id") != model_id or man.get("model_hash") != model_hash:
        raise ModelHashMismatch(f"package {pkg.name} holds {man.get('model_id')}@{str(man.get('model_hash'))[:16]}…, "
                                f"registered is {model_id}@{model_hash[:16]}…")
    aad = sealing.weights_aad(model_id, model_hash, plaintext_digest or files_digest(pkg))
    with open(pkg / SEALED_FILE, "rb") as f:
        header = f.read(sealing.WEIGHTS_HEADER_LEN)
        size = os.fstat(f.fileno()).st_size - sealing.WEIGHTS_HEADER_LEN
        if size <= 0:
            raise sealing.SealError("sealed weights are truncated")
        mem = _anonymous_memory(size)
        view = memoryview(mem)
        _read_exact(f, view)
    sealing.open_weights(header, view, key, aad)
    view.release()
    return safetensors_views(mem)


def _dtypes() -> dict:
    import torch

    return {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
            "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
            "BOOL": torch.bool}


def safetensors_views(buf) -> dict:
    """Tensors of a safetensors image in a writable buffer, sharing its memory."""
    import torch

    mv = memoryview(buf)
    if len(mv) < 8:
        raise ValueError("not a safetensors image")
    (hlen,) = struct.unpack_from("<Q", mv, 0)
    if 8 + hlen > len(mv):
        raise ValueError("safetensors header runs past the data")
    header = json.loads(bytes(mv[8:8 + hlen]))
    base, dtypes, out = 8 + hlen, _dtypes(), {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape = dtypes[info["dtype"]], list(info["shape"])
        start, end = info["data_offsets"]
        count = math.prod(shape)
        if end - start != count * dtype.itemsize or base + end > len(mv):
            raise ValueError(f"safetensors entry {name!r} has inconsistent offsets")
        if count == 0:
            out[name] = torch.empty(shape, dtype=dtype)
        else:
            out[name] = torch.frombuffer(buf, dtype=dtype, count=count, offset=base + start).view(shape)
    mv.release()
    return out

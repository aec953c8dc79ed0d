"""Small shared helpers: atomic writes, progress bars, seeding, devices."""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

import numpy as np
import torch

T = TypeVar("T")


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (e.g. 0o022), read from ``/proc/self/status`` where it is there, else by setting it and
    putting it back at once (under a lock)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new regular file gets under the current umask: ``0o666 & ~umask`` (0o644 under umask 022)."""
    return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds. The file gets
    the mode of a file created under the process umask (``mkstemp`` alone would leave it 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, file_mode())  # after the block: a writer may have replaced the temporary file
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN/±inf float replaced by ``None`` (recursively through dicts, lists and tuples) and
    numpy scalars and 0-d arrays turned into Python numbers, so it is valid strict JSON."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.generic, np.ndarray)) and np.ndim(obj) == 0:
        obj = obj.item()
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    return obj


def to_json_text(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON text of ``obj`` (NaN/±inf written as ``null``, never as bare ``NaN``) with a trailing newline."""
    return json.dumps(json_safe(obj), indent=indent, sort_keys=False, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write strict JSON atomically (indented, trailing newline; NaN/±inf become ``null``)."""
    write_text(path, to_json_text(obj))


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def progress_enabled() -> bool:
    """Bars only on an interactive terminal, never under CI."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def progress(it: Iterable[T], desc: str = "", total: int | None = None, **kw: Any) -> Iterable[T]:
    """A tqdm bar on a terminal; the bare iterable otherwise."""
    if not progress_enabled():
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, total=total, leave=False, dynamic_ncols=True, **kw)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch Generator seeded the same."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` → cuda if available, else mps, else cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def machine_line() -> str:
    """``x86_64, 2 CPU cores, 2 threads`` (+ the CUDA device when there is one): where the numbers were taken."""
    import os
    import platform

    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} threads{gpu}, "
            f"{platform.system()}")


def mix(*parts: int | str) -> int:
    """A seed in [0, 2**63) derived from ``parts`` (SHA-256): independent streams per (seed, index, ...)."""
    import hashlib

    h = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)

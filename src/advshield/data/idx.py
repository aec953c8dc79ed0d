"""Reader for the IDX format of the MNIST family (optionally gzip-compressed).

Format: 2 zero bytes, a type code (0x08 = uint8, ...), the number of dimensions, then one big-endian
uint32 per dimension, then the data in C order.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ..errors import DataError

_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a numpy array of its declared shape and dtype."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from None
    return parse_idx(raw, str(path))


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes; raise :class:`DataError` on a bad header or a truncated payload."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{name} is not an IDX file (bad magic number)")
    dtype = np.dtype(_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: IDX header is truncated")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape)) if shape else 0
    need = header + count * dtype.itemsize
    if len(raw) != need:
        raise DataError(f"{name}: IDX payload has {len(raw) - header} bytes, header says {need - header}")
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, arr: np.ndarray, compress: bool | None = None) -> None:
    """Write an array as IDX (gzip when ``compress`` or the name ends in ``.gz``). Used by tests and export."""
    path = Path(path)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _DTYPES.items()}
    dt = arr.dtype.newbyteorder("=")
    if dt not in codes:
        raise ValueError(f"dtype {arr.dtype} cannot be stored as IDX")
    head = bytes([0, 0, codes[dt], arr.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    payload = head + np.ascontiguousarray(arr).astype(np.dtype(_DTYPES[codes[dt]])).tobytes()
    if compress or (compress is None and path.suffix == ".gz"):
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)

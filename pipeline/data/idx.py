"""Read and write IDX files (the MNIST container format), gzipped or raw.

Layout: two zero bytes, a dtype code, the number of dimensions, then one big-endian uint32 per
dimension, then the data in C order. https://yann.lecun.com/exdb/mnist/ describes it.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError

_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder(">"): code for code, dtype in _DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"
_FIX = "delete it and fetch it again (dvc repro download)"


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes (gzipped or raw) to an array; any defect raises PipelineError naming `name`.

    The message says what is wrong, not how to fix it: that depends on where the bytes came from.
    """
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise PipelineError(f"{name}: corrupt or truncated gzip stream ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise PipelineError(
            f"{name}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})"
        )
    code, ndim = data[2], data[3]
    if code not in _DTYPES:
        raise PipelineError(f"{name}: unknown IDX data type code 0x{code:02x}")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise PipelineError(
            f"{name}: truncated IDX header ({ndim} dimensions need {header_len} bytes, found "
            f"{len(data)})"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = _DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    found = len(data) - header_len
    if found != expected:
        problem = "truncated" if found < expected else "has trailing bytes"
        raise PipelineError(
            f"{name}: {problem}: header {shape} needs {expected} data bytes, found {found}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def is_idx(data: bytes) -> bool:
    """gzip (how IDX files ship) or the IDX magic: two zero bytes, then a dtype code (0x08 up;
    parse_idx names a bad one)."""
    return data[:2] == _GZIP_MAGIC or (
        len(data) >= 4 and data[:2] == b"\x00\x00" and data[2] >= 0x08
    )


def read_idx(path: Path) -> np.ndarray:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PipelineError(f"{path}: cannot read ({exc.strerror}); {_FIX}") from None
    try:
        return parse_idx(data, str(path))
    except PipelineError as exc:
        raise PipelineError(f"{exc}; {_FIX}") from None


def encode_idx(array: np.ndarray, compress: bool = True) -> bytes:
    array = np.asarray(array)
    big_endian = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    if big_endian not in _CODES:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    header = bytes([0, 0, _CODES[big_endian], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    raw = header + array.astype(big_endian).tobytes()
    return gzip.compress(raw, mtime=0) if compress else raw

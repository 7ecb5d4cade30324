"""IDX reader on tiny synthetic files: round trips, and a clear error naming the file for each
defect."""

from __future__ import annotations

import gzip
import re
import struct

import numpy as np
import pytest

from pipeline.data.idx import encode_idx, is_idx, parse_idx, read_idx
from pipeline.errors import PipelineError

ARRAYS = {
    "uint8": np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
    "int8": np.array([-128, 0, 127], dtype=np.int8),
    "int16": np.array([[-300, 300]], dtype=np.int16),
    "int32": np.array([-(2**31), 0, 2**31 - 1], dtype=np.int32),
    "float32": np.array([[0.5, -1.25], [3.0e8, np.inf]], dtype=np.float32),
    "float64": np.array([np.pi, -0.0], dtype=np.float64),
    "empty": np.zeros((0, 28, 28), dtype=np.uint8),
}


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("kind", ARRAYS)
def test_round_trip(tmp_path, kind, compress):
    array = ARRAYS[kind]
    path = tmp_path / "a.idx"
    path.write_bytes(encode_idx(array, compress=compress))
    back = read_idx(path)
    assert back.dtype == array.dtype and back.dtype.isnative
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable


def test_header_layout_matches_the_format():
    data = encode_idx(np.zeros((2, 3), dtype=np.int32), compress=False)
    assert data[:4] == bytes([0, 0, 0x0C, 2])
    assert struct.unpack(">2I", data[4:12]) == (2, 3)
    assert len(data) == 12 + 2 * 3 * 4
    assert (
        encode_idx(np.array([1, 256], dtype=np.int32), compress=False)[8:]
        == b"\x00\x00\x00\x01\x00\x00\x01\x00"
    )


def test_gzip_output_is_deterministic():
    array = ARRAYS["uint8"]
    assert encode_idx(array) == encode_idx(array)
    assert gzip.decompress(encode_idx(array)) == encode_idx(array, compress=False)


def test_unsupported_dtype_cannot_be_encoded():
    with pytest.raises(ValueError, match="IDX cannot store dtype int64"):
        encode_idx(np.zeros(3, dtype=np.int64))


RAW = encode_idx(np.arange(24, dtype=np.uint8).reshape(2, 3, 4), compress=False)
DEFECTS = {
    "truncated data": (RAW[:-5], r"truncated: header \(2, 3, 4\) needs 24 data bytes, found 19"),
    "trailing bytes": (
        RAW + b"\x00\x00",
        r"has trailing bytes: header \(2, 3, 4\) needs 24 data bytes, found 26",
    ),
    "bad magic": (b"\x01\x02" + RAW[2:], r"not an IDX file \(bad magic number 01020803\)"),
    "empty": (b"", r"not an IDX file \(bad magic number empty\)"),
    "unknown dtype": (RAW[:2] + b"\x07" + RAW[3:], r"unknown IDX data type code 0x07"),
    "truncated header": (RAW[:9], r"truncated IDX header \(3 dimensions need 16 bytes, found 9\)"),
    "corrupt gzip": (gzip.compress(RAW)[:-12] + b"\xff" * 12, r"corrupt or truncated gzip stream"),
    "truncated gzip": (gzip.compress(RAW)[:20], r"corrupt or truncated gzip stream"),
    "truncated inside gzip": (gzip.compress(RAW[:-1]), r"truncated: header \(2, 3, 4\)"),
}


@pytest.mark.parametrize("defect", DEFECTS)
def test_defects_raise_one_line_naming_the_file(tmp_path, defect):
    data, problem = DEFECTS[defect]
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(data)
    with pytest.raises(PipelineError) as caught:
        read_idx(path)
    message = str(caught.value)
    assert re.match(rf"{re.escape(str(path))}: {problem}", message), message
    assert message.endswith("delete it and fetch it again (dvc repro download)")
    assert "\n" not in message


def test_parse_names_the_given_source_without_a_fix():
    with pytest.raises(PipelineError, match=r"^labels\.gz: truncated: .* found 19$"):
        parse_idx(DEFECTS["truncated data"][0], "labels.gz")


def test_unreadable_file_is_named(tmp_path):
    with pytest.raises(
        PipelineError,
        match=rf"^{re.escape(str(tmp_path / 'missing.gz'))}: cannot read \(No such file",
    ):
        read_idx(tmp_path / "missing.gz")


def test_huge_declared_shape_is_rejected_not_allocated():
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 2**32 - 1)
    with pytest.raises(PipelineError, match="truncated"):
        parse_idx(header + b"\x00" * 8, "huge")


def test_is_idx_recognises_gzip_and_the_magic_but_not_pictures():
    assert is_idx(RAW) and is_idx(gzip.compress(RAW))
    assert is_idx(
        b"\x00\x00\x0a\x01"
    )  # an unknown dtype code still counts: parse_idx then names it
    png = b"\x89PNG\r\n\x1a\n" + bytes(16)
    assert not is_idx(png) and not is_idx(b"\x00\x00") and not is_idx(b"\x00\x00\x07\x01")

"""The safetensors file format, read and written with numpy alone (no pickle, no code run on load).

A file is an 8-byte little-endian header length N, N bytes of JSON (each tensor's dtype, shape and
byte range in the data that follows; an optional "__metadata__" of strings), then the data. Every
check a reader needs is made here: the header's length and JSON, each entry's dtype, shape and range
inside the file, ranges that neither overlap nor leave gaps, and the file's exact length. An error
names the file and what is wrong.
"""

from __future__ import annotations

import json
import os
import struct
from math import prod

import numpy as np

from .. import dtypes as _dt

# safetensors' dtype names (https://huggingface.co/docs/safetensors), for the dtypes jitorch has
_CODES = {"float32": "F32", "float64": "F64", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
          "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}
_NAMES = {code: name for name, code in _CODES.items()}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # (safetensors' own reader refuses larger headers)


class FormatError(ValueError):
    """A file that is not what it should be: truncated, oversized, inconsistent or of another version."""


def save_file(arrays: dict[str, np.ndarray], path: str, metadata: dict[str, str] | None = None) -> None:
    """Write `arrays` (name -> numpy array of a dtype jitorch has) to `path`, written to a temporary
    file first and renamed, so that a failure leaves no partial file under the name."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    contiguous = {}
    for name, array in arrays.items():
        dtype = _dt.from_numpy_dtype(np.dtype(array.dtype)).name
        if dtype not in _CODES:
            raise TypeError(f"safetensors has no dtype for {name!r} ({dtype})")
        data = array if array.flags.c_contiguous else array.copy()  # (ascontiguousarray makes 0-d arrays 1-d)
        contiguous[name] = data
        header[name] = {"dtype": _CODES[dtype], "shape": list(data.shape),
                        "data_offsets": [offset, offset + data.nbytes]}
        offset += data.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # (the data starts 8-byte aligned, as the format recommends)
    partial = f"{path}.partial-{os.getpid()}"
    try:
        with open(partial, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for data in contiguous.values():
                f.write(data.tobytes())
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def load_file(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(name -> array, metadata) of a safetensors file, every entry checked (see the module's docstring)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise FormatError(f"{path}: truncated: {size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise FormatError(f"{path}: header length {n} does not fit the file ({size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise FormatError(f"{path}: the header is not JSON ({err})") from None
        data = f.read()
    if not isinstance(header, dict):
        raise FormatError(f"{path}: the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError(f"{path}: __metadata__ must map names to strings")
    arrays, ranges = {}, []
    for name, entry in header.items():
        arrays[name] = _entry(path, name, entry, data)
        ranges.append(tuple(entry["data_offsets"]))
    end = 0
    for start, stop in sorted(ranges):
        if start != end:
            raise FormatError(f"{path}: tensor data overlaps or leaves a gap at byte {end} of the data")
        end = stop
    if end != len(data):
        raise FormatError(f"{path}: {len(data) - end} bytes past the last tensor's data (truncated or oversized file?)"
                          if end < len(data) else f"{path}: the data is {end - len(data)} bytes short (truncated)")
    return arrays, metadata


def _entry(path: str, name: str, entry, data: bytes) -> np.ndarray:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise FormatError(f"{path}: tensor {name!r}: expected dtype, shape and data_offsets, got {entry!r}")
    code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if code not in _NAMES:
        raise FormatError(f"{path}: tensor {name!r}: unknown dtype {code!r}")
    if (not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape)
            or not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)):
        raise FormatError(f"{path}: tensor {name!r}: malformed shape {shape!r} or data_offsets {offsets!r}")
    dtype = _dt.get_dtype(_NAMES[code]).np
    start, stop = offsets
    if not 0 <= start <= stop <= len(data):
        raise FormatError(f"{path}: tensor {name!r}: bytes {start}..{stop} lie outside the data "
                          f"({len(data)} bytes): truncated file?")
    if stop - start != prod(shape) * dtype.itemsize:
        raise FormatError(f"{path}: tensor {name!r}: {stop - start} bytes for shape {shape} of {_NAMES[code]} "
                          f"({prod(shape) * dtype.itemsize} expected)")
    return np.frombuffer(data, dtype, prod(shape), start).reshape(shape).copy()

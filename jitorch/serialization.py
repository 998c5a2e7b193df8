"""`jitorch.save` / `jitorch.load`: one safetensors file holds tensors and the structure around them.

The file is plain safetensors: an 8-byte little-endian header length, a JSON header naming each
tensor's dtype, shape and byte range, then the raw little-endian bytes. Anything around the tensors
(nested dicts, lists, tuples, numbers, strings: a state dict, an optimizer state, a scheduler state)
is JSON kept in the header's `__metadata__` under the key "jitorch", with each tensor replaced by a
reference to its name. Loading runs no code (no pickle), checks every header field and byte range,
and raises `CheckpointError` naming the file for anything truncated, corrupt or foreign.

Tensors are named by their path in the object (`"layer.weight"`, `"state.0.exp_avg"`), so a flat
state dict saved here loads in any safetensors reader, and a file written by another safetensors
writer (`safetensors.torch.save_file`) loads here as a flat dict of tensors.

Tensors are saved from any device as host copies; each one's device is kept in `__metadata__` under
"jitorch_devices" (only those not on the CPU), and `load` puts it back there, or where `map_location`
says, as `torch.load` does.

Saving to a path is atomic: the bytes go to a temporary file in the same directory, are flushed and
fsynced, and only then renamed over the target, so a crash mid-save leaves the old checkpoint intact.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import struct
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import ml_dtypes
import numpy as np

from . import cuda
from . import dtypes as _dt
from .creation import from_numpy
from .device import Device, cpu
from .nn.modules.module import Module
from .tensor import Tensor

__all__ = ["save", "load", "CheckpointError"]

FileLike = str | os.PathLike | IO[bytes]
MapLocation = str | Device | dict | Callable | None

_HEADER_LEN = struct.Struct("<Q")
_MAX_HEADER_BYTES = 100_000_000  # the limit the safetensors reference implementation enforces
_META_KEY = "jitorch"
_DEVICES_KEY = "jitorch_devices"  # tensor name -> the device it was saved from, for those not on the CPU
_TAG = "__jt_"

# safetensors dtype code <-> jitorch dtype, and the little-endian numpy dtype of the bytes on disk.
_CODE_OF = {_dt.float32: "F32", _dt.float64: "F64", _dt.float16: "F16", _dt.bfloat16: "BF16",
            _dt.int32: "I32", _dt.int64: "I64", _dt.int16: "I16", _dt.int8: "I8", _dt.uint8: "U8",
            _dt.bool_: "BOOL"}
_DISK_DTYPE = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8"), "F16": np.dtype("<f2"),
               "BF16": np.dtype(ml_dtypes.bfloat16), "I32": np.dtype("<i4"), "I64": np.dtype("<i8"),
               "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("u1"),
               # Integer types jitorch lacks load widened, without loss, to one it has.
               "U16": np.dtype("<u2"), "U32": np.dtype("<u4")}
_LOADED_DTYPE = {"U16": _dt.int32, "U32": _dt.int64, **{code: dtype for dtype, code in _CODE_OF.items()}}


class CheckpointError(RuntimeError, ValueError):
    """A file that `jitorch.load` can't read: truncated, corrupt, or not a safetensors checkpoint."""


# ---------------------------------------------------------------------------------------------
# save


def save(obj: Any, f: FileLike) -> None:
    """Write `obj` (a tensor, or nested dicts/lists/tuples of tensors and plain values) to `f`.

    `f` is a path (written atomically) or a binary file object. Example:

        jitorch.save({"model": model.state_dict(), "optim": opt.state_dict(), "epoch": 3}, "ckpt.st")
    """
    table = _TensorTable()
    structure = _encode(obj, (), table)
    metadata = {"format": "pt", _META_KEY: json.dumps(structure, allow_nan=False, separators=(",", ":"))}
    if table.devices:
        metadata[_DEVICES_KEY] = json.dumps(table.devices, separators=(",", ":"))
    header = _header_bytes(table, metadata)
    if isinstance(f, (str, os.PathLike)):
        _atomic_write(Path(f), header, table.arrays)
    else:
        _write_payload(f, header, table.arrays)


class _TensorTable:
    """The tensors found while encoding: a unique name and little-endian bytes for each one."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.arrays: list[np.ndarray] = []
        self.codes: list[str] = []
        self.devices: dict[str, str] = {}  # name -> device, for tensors saved from another device than the CPU
        self._name_of_id: dict[int, str] = {}
        self._keep_alive: list[Any] = []  # ids must stay unique while we encode

    def add(self, value: Tensor | np.ndarray, path: tuple) -> str:
        """Register a tensor (once, however often it appears) and return its name in the file."""
        known = self._name_of_id.get(id(value))
        if known is not None:
            return known
        array = value.detach()._concrete("jitorch.save") if isinstance(value, Tensor) else value
        dtype = _dt.from_numpy_dtype(array.dtype)
        name = self._unique_name(".".join(str(p) for p in path) or "tensor")
        if isinstance(value, Tensor) and value.device is not cpu:
            self.devices[name] = str(value.device)
        self._name_of_id[id(value)] = name
        self._keep_alive.append(value)
        self.names.append(name)
        # Not np.ascontiguousarray: it turns a 0-d array into a 1-d one.
        self.arrays.append(_little_endian(array if array.flags.c_contiguous else array.copy(order="C")))
        self.codes.append(_CODE_OF[dtype])
        return name

    def _unique_name(self, name: str) -> str:
        taken = set(self.names)
        candidate, n = name, 1
        while candidate in taken or candidate == "__metadata__":
            candidate, n = f"{name}#{n}", n + 1
        return candidate


def _little_endian(array: np.ndarray) -> np.ndarray:
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and np.little_endian is False):
        return array.astype(array.dtype.newbyteorder("<"))
    return array


def _encode(obj: Any, path: tuple, table: _TensorTable | None) -> Any:
    """`obj` as JSON-ready values, tensors replaced by `{"__jt_tensor__": name}` references.

    `table` is None where tensors are not allowed (dict keys).
    """
    if isinstance(obj, (Tensor, np.ndarray)):
        if table is None:
            raise TypeError(f"jitorch.save can't use a tensor as a dict key (at {'.'.join(map(str, path))})")
        kind = "tensor__" if isinstance(obj, Tensor) else "ndarray__"
        return {_TAG + kind: table.add(obj, path)}
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else {_TAG + "float__": repr(float(obj))}
    if isinstance(obj, _dt.DType):
        return {_TAG + "dtype__": obj.name}
    if isinstance(obj, Device):
        return {_TAG + "device__": str(obj)}
    if isinstance(obj, tuple):
        return {_TAG + "tuple__": [_encode(v, path + (i,), table) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, path + (i,), table) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        return _encode_dict(obj, path, table)
    where = ".".join(str(p) for p in path) or "the top level"
    if isinstance(obj, Module):
        raise TypeError(
            f"jitorch.save can't store a whole Module ({type(obj).__name__}, at {where}): PyTorch pickles "
            "the model's class, but jitorch saves no code (no pickle). Save its weights instead, "
            "jitorch.save(model.state_dict(), path), and load them into a freshly built model with "
            "model.load_state_dict(jitorch.load(path))."
        )
    raise TypeError(
        f"jitorch.save can't store a {type(obj).__name__} (at {where}): it stores tensors, numpy arrays, "
        "numbers, strings, None, dtypes, devices, and dicts/lists/tuples of them (no pickle). Convert "
        "it, e.g. to a dict, first."
    )


def _encode_dict(obj: dict, path: tuple, table: _TensorTable | None) -> Any:
    plain_keys = all(isinstance(k, str) and not k.startswith(_TAG) for k in obj)
    if plain_keys:
        return {k: _encode(v, path + (k,), table) for k, v in obj.items()}
    # Non-string keys (an optimizer state's parameter indices) keep their type as [key, value] pairs.
    return {_TAG + "dict__": [[_encode(k, path, None), _encode(v, path + (k,), table)]
                              for k, v in obj.items()]}


def _header_bytes(table: _TensorTable, metadata: dict[str, str]) -> bytes:
    """The JSON header, with tensors laid out largest item size first so each starts aligned."""
    order = sorted(range(len(table.names)), key=lambda i: -table.arrays[i].dtype.itemsize)
    table.names[:] = [table.names[i] for i in order]
    table.arrays[:] = [table.arrays[i] for i in order]
    table.codes[:] = [table.codes[i] for i in order]
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, array, code in zip(table.names, table.arrays, table.codes):
        header[name] = {"dtype": code, "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    padding = -(_HEADER_LEN.size + len(raw)) % 8  # the spec pads with spaces to keep data 8-aligned
    return raw + b" " * padding


def _write_payload(f: IO[bytes], header: bytes, arrays: list[np.ndarray]) -> None:
    f.write(_HEADER_LEN.pack(len(header)))
    f.write(header)
    for array in arrays:
        f.write(array.reshape(-1).view(np.uint8).data)


def _atomic_write(path: Path, header: bytes, arrays: list[np.ndarray]) -> None:
    """Write to a temporary sibling, fsync, then rename over `path`: all or nothing."""
    directory = path.parent
    if not directory.is_dir():
        raise FileNotFoundError(f"jitorch.save: can't write {path}: directory {directory} does not exist")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, _new_file_mode(path))
        with os.fdopen(fd, "wb") as f:
            _write_payload(f, header, arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(directory)


def _new_file_mode(path: Path) -> int:
    """Keep an existing checkpoint's permissions; a new file gets what `open` would give it."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory, which is harmless.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------------------
# load


def load(f: FileLike, map_location: MapLocation = None, *, weights_only: bool = True) -> Any:
    """Read an object written by `jitorch.save` (or any safetensors file) from a path or file object.

    Tensors go back to the device they were saved from, as with `torch.load` (an error says what to
    do when that device is missing here), unless `map_location` says where: a device or its name
    ("cpu", "cuda", "cuda:1"), a dict from saved to wanted device names (`{"cuda:1": "cuda:0"}`;
    other devices stay), or a callable `(tensor, saved_device_name) -> tensor or None` (None: the
    saved device), which gets a CPU tensor. numpy arrays load as numpy arrays wherever `map_location`
    points. Loading never runs code, so `weights_only` is accepted for PyTorch compatibility and has
    no effect.

        state = jitorch.load("ckpt.st", map_location="cpu")  # a GPU checkpoint on a CPU-only machine
    """
    name = _file_name(f)
    data = _read_bytes(f)
    path = os.fspath(f) if isinstance(f, (str, os.PathLike)) else getattr(f, "name", None)
    other = _other_format(data, path if isinstance(path, str) else None)
    if other is not None:
        raise CheckpointError(f"{name}: {other}")
    try:
        header, data_start = _parse_header(data)
        metadata = header.pop("__metadata__", None) or {}
        tensors = _Loaded(_read_tensors(header, memoryview(data)[data_start:]), _saved_devices(metadata),
                          map_location)
        if _META_KEY not in metadata:
            return {name: tensors.placed(name) for name in tensors.host}  # a plain safetensors file
        return _decode(_parse_structure(metadata[_META_KEY]), tensors)
    except CheckpointError as err:
        raise CheckpointError(f"{name}: {err}") from None
    except RecursionError:
        raise CheckpointError(f"{name}: corrupt metadata: the structure is nested too deeply") from None


def _file_name(f: FileLike) -> str:
    if isinstance(f, (str, os.PathLike)):
        return os.fspath(f)
    return str(getattr(f, "name", None) or repr(f))


def _read_bytes(f: FileLike) -> bytes:
    if isinstance(f, (str, os.PathLike)):
        with open(f, "rb") as fh:
            return fh.read()
    return f.read()


# What to do with a PyTorch checkpoint, in PyTorch (`v.contiguous().clone()`: save_file refuses
# non-contiguous tensors and tensors sharing memory, such as tied weights).
_CONVERT_ADVICE = """\
jitorch never unpickles (unpickling can run arbitrary code; jitorch.load runs none), so it can't read
this format. Convert the state dict to safetensors once, in PyTorch (pip install safetensors):
    import torch
    from safetensors.torch import save_file
    state = torch.load({path}, map_location="cpu")  # a flat dict of tensors, e.g. model.state_dict()
    save_file({{k: v.contiguous().clone() for k, v in state.items()}}, "model.safetensors")
then jitorch.load("model.safetensors") returns those tensors by name (model.load_state_dict takes it).
A checkpoint holding several state dicts (model, optimizer, ...) converts one state dict at a time."""

# PyTorch's legacy torch.save format starts by pickling its magic number 0x1950a86a20f9469cfc6c
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def _other_format(data: bytes, path: str | None) -> str | None:
    """What a file that is not safetensors is, for the formats people mistake for it: PyTorch's
    torch.save zip archive and its legacy pickle format (with advice naming `path`, the file's path
    if known), other zips and pickles."""
    if data[_HEADER_LEN.size:_HEADER_LEN.size + 1] == b"{":  # where every safetensors header starts
        return None
    advice = _CONVERT_ADVICE.format(path="path" if path is None else repr(path))
    if data.startswith(b"PK\x03\x04"):
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError):
            names = []
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return f"this is a PyTorch checkpoint (torch.save's zip format), not safetensors.\n{advice}"
        return "not a safetensors checkpoint: it is a zip archive (numpy's .npz is one; np.load reads it)"
    if data.startswith(_TORCH_LEGACY_MAGIC):
        return f"this is a PyTorch checkpoint (torch.save's legacy pickle format), not safetensors.\n{advice}"
    if len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5:
        return ("not a safetensors checkpoint: it is a Python pickle, and jitorch never unpickles (unpickling "
                "can run arbitrary code)")
    return None


def _parse_header(data: bytes) -> tuple[dict, int]:
    """The header dict and where the tensor bytes start; every structural problem is an error."""
    if len(data) < _HEADER_LEN.size:
        raise CheckpointError(f"not a safetensors checkpoint: only {len(data)} bytes, too short for "
                              "the 8-byte header length (truncated or empty file?)")
    (header_len,) = _HEADER_LEN.unpack_from(data)
    if header_len > _MAX_HEADER_BYTES:
        raise CheckpointError(f"not a safetensors checkpoint: header length field is {header_len} bytes "
                              f"(limit {_MAX_HEADER_BYTES}); the file is corrupt or of another format")
    data_start = _HEADER_LEN.size + header_len
    if data_start > len(data):
        raise CheckpointError(f"truncated: the header should be {header_len} bytes but only "
                              f"{len(data) - _HEADER_LEN.size} follow the length field")
    raw = bytes(data[_HEADER_LEN.size:data_start])
    if not raw.startswith(b"{"):
        raise CheckpointError("not a safetensors checkpoint: the header is not a JSON object")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f"corrupt header: it is not valid UTF-8 JSON ({err})") from None
    if not isinstance(header, dict):
        raise CheckpointError("corrupt header: it is not a JSON object")
    _check_metadata(header.get("__metadata__"))
    return header, data_start


def _check_metadata(metadata: Any) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError("corrupt header: __metadata__ must map strings to strings")


def _read_tensors(header: dict, buffer: memoryview) -> dict[str, Tensor]:
    """Check each entry and that the entries tile the data exactly; return the tensors by name."""
    entries = {name: _check_entry(name, entry) for name, entry in header.items()}
    end = 0
    for name, (_, _, (begin, stop)) in sorted(entries.items(), key=lambda kv: kv[1][2]):
        if begin != end:
            raise CheckpointError(f"corrupt header: tensor {name!r} starts at byte {begin} of the data, "
                                  f"but the previous tensor ended at {end} (overlap or hole)")
        end = stop
    if end != len(buffer):
        what = "truncated" if end > len(buffer) else "corrupt"
        raise CheckpointError(f"{what}: the header describes {end} bytes of tensor data, but the file "
                              f"holds {len(buffer)}")
    return {name: _tensor_from_bytes(code, shape, buffer[begin:stop])
            for name, (code, shape, (begin, stop)) in entries.items()}


def _check_entry(name: str, entry: Any) -> tuple[str, tuple[int, ...], tuple[int, int]]:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise CheckpointError(f"corrupt header: entry {name!r} needs dtype, shape and data_offsets")
    code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if code not in _DISK_DTYPE:
        raise CheckpointError(f"tensor {name!r} has dtype {code!r}, which jitorch can't load; supported: "
                              f"{sorted(_DISK_DTYPE)}")
    if not _is_int_list(shape) or not _is_int_list(offsets) or len(offsets) != 2:
        raise CheckpointError(f"corrupt header: tensor {name!r} has shape {shape!r} and data_offsets "
                              f"{offsets!r}; expected lists of non-negative integers")
    begin, stop = offsets
    nbytes = math.prod(shape) * _DISK_DTYPE[code].itemsize
    if stop - begin != nbytes:
        raise CheckpointError(f"corrupt header: tensor {name!r} of dtype {code} and shape {shape} needs "
                              f"{nbytes} bytes but its data_offsets {offsets} span {stop - begin}")
    return code, tuple(shape), (begin, stop)


def _is_int_list(value: Any) -> bool:
    return isinstance(value, list) and all(type(v) is int and v >= 0 for v in value)


def _tensor_from_bytes(code: str, shape: tuple[int, ...], raw: memoryview) -> Tensor:
    array = np.frombuffer(raw, dtype=_DISK_DTYPE[code]).reshape(shape)
    if code == "BOOL":
        array = array != 0  # any nonzero byte is true; numpy bools must be exactly 0 or 1
    dtype = _LOADED_DTYPE[code]
    return from_numpy(array.astype(dtype.np, copy=True))  # a copy: writable, native byte order


def _saved_devices(metadata: dict[str, str]) -> dict[str, str]:
    text = metadata.get(_DEVICES_KEY)
    if text is None:
        return {}
    try:
        devices = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"corrupt metadata: {_DEVICES_KEY} is not valid JSON ({err})") from None
    if not isinstance(devices, dict) or not all(isinstance(v, str) for v in devices.values()):
        raise CheckpointError(f"corrupt metadata: {_DEVICES_KEY} must map tensor names to device names")
    for name, location in devices.items():
        try:
            Device(location)
        except (RuntimeError, TypeError) as err:
            raise CheckpointError(f"corrupt metadata: tensor {name!r} was saved from device {location!r} "
                                  f"({err})") from None
    return devices


class _Loaded:
    """The tensors read from a file (in host memory), each placed on its device when first asked for
    (`placed`), once, so tensors shared in the save stay shared."""

    def __init__(self, host: dict[str, Tensor], devices: dict[str, str], map_location: MapLocation) -> None:
        self.host = host
        self.devices = devices
        self.map_location = map_location
        self._placed: dict[str, Tensor] = {}

    def placed(self, name: str) -> Tensor:
        t = self._placed.get(name)
        if t is None:
            t = self._placed[name] = _restore(self.host[name], self.devices.get(name, "cpu"), self.map_location)
        return t


def _restore(t: Tensor, saved: str, map_location: MapLocation) -> Tensor:
    """Host tensor `t`, saved from device `saved`, where `map_location` puts it (torch.load's rules)."""
    if map_location is None:
        return _to_location(t, saved)
    if isinstance(map_location, (str, Device)):
        return _to_location(t, str(map_location))
    if isinstance(map_location, dict):
        return _to_location(t, str(map_location.get(saved, saved)))
    if callable(map_location):
        moved = map_location(t, saved)
        if moved is not None and not isinstance(moved, Tensor):
            raise TypeError(f"map_location returned a {type(moved).__name__}, expected a Tensor or None")
        return _to_location(t, saved) if moved is None else moved
    raise TypeError(f"map_location should be a device, a device name, a dict or a callable, got "
                    f"{type(map_location).__name__}")


def _to_location(t: Tensor, location: str) -> Tensor:
    """`t` on device `location`, with PyTorch's errors where this machine lacks that device."""
    device = Device(location)
    if device.type == "cuda":
        if not cuda.is_available():
            raise RuntimeError(
                "Attempting to deserialize object on a CUDA device but jitorch.cuda.is_available() is False. "
                "If you are running on a CPU-only machine, please use jitorch.load with "
                "map_location=jitorch.device('cpu') to map your storages to the CPU.")
        index, count = device.index or 0, cuda.device_count()
        if index >= count:
            raise RuntimeError(
                f"Attempting to deserialize object on CUDA device {index} but jitorch.cuda.device_count() is "
                f"{count}. Please use jitorch.load with map_location to map your storages to an existing device.")
    return t.to(device)


def _parse_structure(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"corrupt metadata: the jitorch structure is not valid JSON ({err})") from None


def _decode(node: Any, tensors: _Loaded) -> Any:
    """Rebuild the saved object from its JSON form; tensors shared in the save are shared again."""
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    tag = next((k for k in node if k.startswith(_TAG)), None)
    if tag is None:
        return {k: _decode(v, tensors) for k, v in node.items()}
    if len(node) != 1 or tag not in _DECODERS:
        raise CheckpointError(f"corrupt metadata: unknown entry {tag!r} in the jitorch structure")
    return _DECODERS[tag](node[tag], tensors)


def _decode_tensor(name: Any, tensors: _Loaded) -> Tensor:
    return tensors.placed(_tensor_name(name, tensors))


def _tensor_name(name: Any, tensors: _Loaded) -> str:
    if not isinstance(name, str) or name not in tensors.host:
        raise CheckpointError(f"corrupt metadata: the structure names a tensor {name!r} the file lacks")
    return name


def _decode_float(text: Any, tensors) -> float:
    if text not in ("inf", "-inf", "nan"):
        raise CheckpointError(f"corrupt metadata: {text!r} is not a non-finite float")
    return float(text)


def _decode_pairs(pairs: Any, tensors: _Loaded) -> dict:
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        raise CheckpointError("corrupt metadata: a dict's items are not [key, value] pairs")
    return {_hashable(_decode(k, tensors)): _decode(v, tensors) for k, v in pairs}


def _hashable(key: Any) -> Any:
    try:
        hash(key)
    except TypeError:
        raise CheckpointError(f"corrupt metadata: dict key {key!r} is not hashable") from None
    return key


def _decode_named(kind: str, make: Callable[[str], Any]) -> Callable[[Any, dict], Any]:
    def decode(name: Any, tensors) -> Any:
        try:
            return make(name)
        except (TypeError, RuntimeError) as err:
            raise CheckpointError(f"corrupt metadata: bad {kind} {name!r} ({err})") from None

    return decode


def _decode_sequence(items: Any, tensors: _Loaded) -> tuple:
    if not isinstance(items, list):
        raise CheckpointError("corrupt metadata: a tuple's items are not a list")
    return tuple(_decode(v, tensors) for v in items)


def _decode_ndarray(name: Any, tensors: _Loaded) -> np.ndarray:
    return tensors.host[_tensor_name(name, tensors)].numpy()  # a numpy array stays in host memory


_DECODERS: dict[str, Callable[[Any, dict], Any]] = {
    _TAG + "tensor__": _decode_tensor,
    _TAG + "ndarray__": _decode_ndarray,
    _TAG + "float__": _decode_float,
    _TAG + "tuple__": _decode_sequence,
    _TAG + "dict__": _decode_pairs,
    _TAG + "dtype__": _decode_named("dtype", _dt.get_dtype),
    _TAG + "device__": _decode_named("device", Device),
}

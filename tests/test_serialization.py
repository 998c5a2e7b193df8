"""jitorch.save / jitorch.load: safetensors round trips, strict loading, atomic saves, interop."""

import io
import json
import math
import os
import struct

import numpy as np
import pytest
import torch

import jitorch
from jitorch import serialization
from jitorch.optim import Adam
from jitorch.serialization import CheckpointError

ALL_DTYPES = [jitorch.float32, jitorch.float64, jitorch.float16, jitorch.bfloat16, jitorch.int32,
              jitorch.int64, jitorch.bool]


def _sample(dtype, shape=(2, 3)):
    values = np.arange(math.prod(shape)).reshape(shape) * 1.5 - 2
    if dtype is jitorch.bool:
        return jitorch.tensor(values > 0)
    return jitorch.tensor(values).to(dtype)


def _as_f64(t):
    return np.asarray(t.to(jitorch.float64).numpy())


def _split(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


# --- round trips ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.name)
def test_every_dtype_round_trips(tmp_path, dtype):
    t = _sample(dtype)
    jitorch.save(t, tmp_path / "t.safetensors")
    out = jitorch.load(tmp_path / "t.safetensors")
    assert isinstance(out, jitorch.Tensor) and out.dtype == dtype and out.shape == t.shape
    np.testing.assert_array_equal(_as_f64(out), _as_f64(t))


def test_nested_structure_round_trips(tmp_path):
    shared = jitorch.randn(3)
    obj = {
        "model": {"layer.weight": jitorch.randn(4, 3), "layer.bias": jitorch.zeros(4)},
        "shared": [shared, shared],
        "int_keys": {0: {"step": jitorch.tensor(5.0)}, 7: "x"},
        "tuple": (1, 2.5, "s", None, True, (jitorch.arange(3),)),
        "floats": [float("inf"), -float("inf"), 0.1, -0.0, 1e300],
        "scalar0d": jitorch.tensor(3, dtype=jitorch.int64),
        "empty": jitorch.zeros(0, 3),
        "transposed": jitorch.randn(3, 5).t(),
        "dtype": jitorch.bfloat16,
        "device": jitorch.device("cpu"),
        "numpy": np.array([1, 2, 3], dtype=np.int32),
        "__jt_tensor__": "a user key that looks like a tag",
        "big_int": 2**70,
    }
    path = tmp_path / "nested.safetensors"
    jitorch.save(obj, path)
    out = jitorch.load(path)
    assert out.keys() == obj.keys()
    np.testing.assert_array_equal(out["model"]["layer.weight"].numpy(), obj["model"]["layer.weight"].numpy())
    assert out["shared"][0] is out["shared"][1]
    assert list(out["int_keys"]) == [0, 7] and out["int_keys"][0]["step"].item() == 5.0
    assert isinstance(out["tuple"], tuple) and out["tuple"][:5] == (1, 2.5, "s", None, True)
    assert isinstance(out["tuple"][5], tuple) and out["tuple"][5][0].tolist() == [0, 1, 2]
    assert out["floats"][:2] == [math.inf, -math.inf] and out["floats"][2:] == [0.1, -0.0, 1e300]
    assert math.copysign(1, out["floats"][3]) == -1
    assert out["scalar0d"].shape == () and out["scalar0d"].dtype == jitorch.int64
    assert out["empty"].shape == (0, 3)
    np.testing.assert_array_equal(out["transposed"].numpy(), obj["transposed"].numpy())
    assert out["dtype"] is jitorch.bfloat16 and out["device"] == jitorch.device("cpu")
    assert isinstance(out["numpy"], np.ndarray) and out["numpy"].dtype == np.int32
    assert out["__jt_tensor__"] == obj["__jt_tensor__"] and out["big_int"] == 2**70


def test_nan_survives(tmp_path):
    jitorch.save({"x": float("nan")}, tmp_path / "n.st")
    assert math.isnan(jitorch.load(tmp_path / "n.st")["x"])


def test_loaded_tensors_are_independent_and_writable(tmp_path):
    t = jitorch.ones(3, requires_grad=True)
    jitorch.save({"a": t, "b": jitorch.zeros(3)}, tmp_path / "w.st")
    out = jitorch.load(tmp_path / "w.st")
    out["a"].add_(1)
    assert out["a"].tolist() == [2.0, 2.0, 2.0] and out["b"].tolist() == [0.0] * 3
    assert not out["a"].requires_grad


def test_optimizer_state_round_trip_continues_identically(tmp_path):
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(4).astype(np.float32) for _ in range(8)]

    def run(params, opt, steps):
        for g in steps:
            params[0].grad = jitorch.tensor(g)
            opt.step()

    reference = [jitorch.ones(4, requires_grad=True)]
    ref_opt = Adam(reference, lr=0.1, amsgrad=True)
    run(reference, ref_opt, grads)

    first = [jitorch.ones(4, requires_grad=True)]
    opt = Adam(first, lr=0.1, amsgrad=True)
    run(first, opt, grads[:4])
    jitorch.save({"params": first, "optim": opt.state_dict()}, tmp_path / "ckpt.safetensors")

    ckpt = jitorch.load(tmp_path / "ckpt.safetensors")
    resumed = [ckpt["params"][0].requires_grad_()]
    opt2 = Adam(resumed, lr=99.0, amsgrad=True)
    opt2.load_state_dict(ckpt["optim"])
    assert opt2.param_groups[0]["betas"] == (0.9, 0.999) and opt2.param_groups[0]["lr"] == 0.1
    assert opt2.state[resumed[0]]["step"].item() == 4
    run(resumed, opt2, grads[4:])
    np.testing.assert_array_equal(resumed[0].detach().numpy(), reference[0].detach().numpy())


def test_file_objects(tmp_path):
    buf = io.BytesIO()
    jitorch.save({"w": jitorch.arange(4)}, buf)
    buf.seek(0)
    assert jitorch.load(buf)["w"].tolist() == [0, 1, 2, 3]
    with open(tmp_path / "f.st", "wb") as f:
        jitorch.save([jitorch.ones(2)], f)
    with open(tmp_path / "f.st", "rb") as f:
        assert jitorch.load(f)[0].tolist() == [1.0, 1.0]
    assert jitorch.load(str(tmp_path / "f.st"))[0].tolist() == [1.0, 1.0]


def test_map_location(tmp_path):
    path = tmp_path / "m.st"
    jitorch.save({"a": jitorch.ones(2), "b": [jitorch.zeros(1)]}, path)
    for where in ("cpu", jitorch.device("cpu"), {"cpu": "cpu"}):
        assert jitorch.load(path, map_location=where)["a"].device == jitorch.device("cpu")
    assert jitorch.load(path, map_location="meta")["a"].device == jitorch.device("meta")
    seen = []

    def mapper(t, location):
        seen.append(location)
        return t * 10

    out = jitorch.load(path, map_location=mapper)
    assert seen == ["cpu", "cpu"] and out["a"].tolist() == [10.0, 10.0]
    assert jitorch.load(path, map_location=lambda t, loc: None)["a"].tolist() == [1.0, 1.0]


def test_unsupported_objects_are_rejected_with_their_path(tmp_path):
    with pytest.raises(TypeError, match=r"set \(at config\.names\)"):
        jitorch.save({"config": {"names": {"a", "b"}}}, tmp_path / "bad.st")
    with pytest.raises(TypeError, match="dict key"):
        jitorch.save({jitorch.ones(1): 1}, tmp_path / "bad.st")
    assert not (tmp_path / "bad.st").exists() and os.listdir(tmp_path) == []


# --- the file format -----------------------------------------------------------------------------

def test_file_is_standard_safetensors_readable_by_hand_on_the_torch_side(tmp_path):
    state = {"w": jitorch.randn(3, 2), "half": jitorch.randn(5).to(jitorch.bfloat16),
             "idx": jitorch.arange(4, dtype=jitorch.int32), "mask": jitorch.tensor([True, False])}
    path = tmp_path / "s.safetensors"
    jitorch.save(state, path)
    header, data = _split(path)
    assert (8 + len(json.dumps(header))) <= len(path.read_bytes())
    assert header["__metadata__"]["format"] == "pt"
    torch_dtypes = {"F32": torch.float32, "BF16": torch.bfloat16, "I32": torch.int32, "BOOL": torch.bool}
    for name, t in state.items():
        entry = header[name]
        begin, end = entry["data_offsets"]
        assert begin % t.element_size() == 0  # laid out aligned, as the reference writer does
        pt = torch.frombuffer(bytearray(data[begin:end]), dtype=torch_dtypes[entry["dtype"]])
        pt = pt.reshape(entry["shape"])
        np.testing.assert_array_equal(pt.to(torch.float64).numpy(), _as_f64(t))
    assert (len(path.read_bytes()) - len(data)) % 8 == 0


def _handmade_safetensors(tensors: dict, metadata=None) -> bytes:
    """Bytes laid out by the safetensors convention from torch tensors (as safetensors.torch does)."""
    codes = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.int32: "I32", torch.int64: "I64", torch.bool: "BOOL", torch.uint8: "U8",
             torch.int16: "I16"}
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors, key=lambda k: (-tensors[k].element_size(), k)):
        t = tensors[name].contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": codes[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata is not None:
        header["__metadata__"] = metadata
    raw_header = json.dumps(header).encode()
    raw_header += b" " * (-len(raw_header) % 8)
    return struct.pack("<Q", len(raw_header)) + raw_header + b"".join(blobs)


def test_loads_a_file_written_by_safetensors_conventions_from_torch(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 4, generator=g), "f64": torch.randn(2, dtype=torch.float64, generator=g),
        "f16": torch.randn(5, generator=g).half(), "bf16": torch.randn(2, 2, generator=g).bfloat16(),
        "i32": torch.arange(6, dtype=torch.int32).reshape(2, 3), "i64": torch.tensor([-(2**40), 7]),
        "bool": torch.tensor([True, False, True]), "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 2),
        "u8": torch.tensor([0, 200, 255], dtype=torch.uint8),
        "i16": torch.tensor([-300, 5], dtype=torch.int16),
    }
    path = tmp_path / "torch.safetensors"
    path.write_bytes(_handmade_safetensors(tensors, {"format": "pt"}))
    out = jitorch.load(path)
    assert set(out) == set(tensors)
    for name, pt in tensors.items():
        assert out[name].shape == tuple(pt.shape)
        assert out[name].dtype == getattr(jitorch, str(pt.dtype).split(".")[1])
        np.testing.assert_array_equal(_as_f64(out[name]), pt.to(torch.float64).numpy())
    # No metadata at all is fine too.
    path.write_bytes(_handmade_safetensors({"x": torch.ones(2)}))
    assert jitorch.load(path)["x"].tolist() == [1.0, 1.0]


def test_foreign_dtype_is_a_clear_error(tmp_path):
    path = tmp_path / "u64.safetensors"
    path.write_bytes(_handmade_safetensors({"x": torch.ones(2)}).replace(b'"F32"', b'"U64"'))
    with pytest.raises(CheckpointError, match=r"u64\.safetensors.*'U64'"):
        jitorch.load(path)


# --- broken files --------------------------------------------------------------------------------

def _small_checkpoint(path):
    opt = Adam([jitorch.ones(2, requires_grad=True)], lr=0.1)
    opt.param_groups[0]["params"][0].grad = jitorch.ones(2)
    opt.step()
    jitorch.save({"w": jitorch.ones(2, 2), "b": jitorch.zeros(3, dtype=jitorch.bfloat16),
                  "optim": opt.state_dict()}, path)
    return path.read_bytes()


def test_truncation_at_every_byte_fails_cleanly_naming_the_file(tmp_path):
    good = tmp_path / "good.safetensors"
    data = _small_checkpoint(good)
    assert jitorch.load(good)["w"].shape == (2, 2)
    cut = tmp_path / "cut.safetensors"
    for size in range(len(data)):
        cut.write_bytes(data[:size])
        with pytest.raises(CheckpointError) as info:
            jitorch.load(cut)
        assert str(cut) in str(info.value), size
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, ValueError)


def test_appended_garbage_is_rejected(tmp_path):
    path = tmp_path / "long.safetensors"
    path.write_bytes(_small_checkpoint(path) + b"\0")
    with pytest.raises(CheckpointError, match="describes"):
        jitorch.load(path)


def test_corrupt_header_bytes_never_escape_as_other_errors(tmp_path):
    good = tmp_path / "good.safetensors"
    data = _small_checkpoint(good)
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    bad = tmp_path / "bad.safetensors"
    failures = 0
    for i in range(header_end):
        for flip in (0x01, 0x20, 0x80):
            corrupted = bytearray(data)
            corrupted[i] ^= flip
            bad.write_bytes(bytes(corrupted))
            try:
                jitorch.load(bad)
            except CheckpointError as err:
                assert str(bad) in str(err)
                failures += 1
    assert failures > header_end  # most header damage is detected


@pytest.mark.parametrize("content", [
    b"", b"abc", b"\x10\x00\x00\x00\x00\x00\x00\x00[1, 2, 3]       ",
    b"\x08\x00\x00\x00\x00\x00\x00\x00not json", b'{"hello": "this is a json text file"}\n',
    b"\x02\x00\x00\x00\x00\x00\x00\x00{}",  # a valid, empty safetensors file: loads below
], ids=["empty", "short", "json-array", "not-json", "text", "empty-safetensors"])
def test_foreign_files_fail_cleanly(tmp_path, content):
    path = tmp_path / "foreign.bin"
    path.write_bytes(content)
    if content.endswith(b"{}"):
        assert jitorch.load(path) == {}
        return
    with pytest.raises(CheckpointError, match="foreign.bin"):
        jitorch.load(path)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy-pickle"])
def test_a_torch_save_file_is_named_with_how_to_convert_it(tmp_path, zip_format):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=zip_format)
    kind = "torch.save's zip format" if zip_format else "torch.save's legacy pickle format"
    with open(path, "rb") as opened:
        for source, shown in ((path, str(path)), (opened, str(path)), (io.BytesIO(path.read_bytes()), None)):
            with pytest.raises(CheckpointError) as info:
                jitorch.load(source)
            msg = str(info.value)
            assert f"this is a PyTorch checkpoint ({kind}), not safetensors" in msg
            assert "never unpickles" in msg and "from safetensors.torch import save_file" in msg
            assert 'jitorch.load("model.safetensors")' in msg and "header length" not in msg
            # the advice's torch.load names the file where its path is known
            assert f"torch.load({'path' if shown is None else repr(shown)}, " in msg
    assert msg.startswith("<_io.BytesIO")


def test_the_conversion_advice_for_a_torch_checkpoint_works(tmp_path, monkeypatch):
    """Run the advice's code as printed, on a state dict with tied weights and a transposed tensor
    (safetensors refuses both as they are), then load the result."""
    pytest.importorskip("safetensors")
    tied = torch.nn.Embedding(5, 4)
    head = torch.nn.Linear(4, 5, bias=False)
    head.weight = tied.weight
    state = torch.nn.Sequential(tied, head).state_dict()
    state["transposed"] = torch.randn(3, 4).t()
    for zip_format in (True, False):
        path = tmp_path / f"model{zip_format}.pt"
        torch.save(state, path, _use_new_zipfile_serialization=zip_format)
        with pytest.raises(CheckpointError) as info:
            jitorch.load(path)
        code = str(info.value).split("(pip install safetensors):\n")[1].split("\nthen ")[0]
        monkeypatch.chdir(tmp_path)
        exec("\n".join(line[4:] for line in code.splitlines()), {})
        loaded = jitorch.load("model.safetensors")
        assert set(loaded) == set(state)
        for name, value in state.items():
            np.testing.assert_array_equal(loaded[name].numpy(), value.numpy())


@pytest.mark.parametrize("kind", ["npz", "pickle"])
def test_other_zips_and_pickles_are_named(tmp_path, kind):
    path = tmp_path / "data.bin"
    if kind == "npz":
        np.savez(path.with_suffix(".npz"), a=np.ones(2))
        path = path.with_suffix(".npz")
        expect = "it is a zip archive"
    else:
        import pickle

        path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
        expect = "it is a Python pickle, and jitorch never unpickles"
    with pytest.raises(CheckpointError, match=f"{path.name}: not a safetensors checkpoint: {expect}"):
        jitorch.load(path)


def test_a_safetensors_header_length_that_looks_like_a_pickle_still_loads(tmp_path):
    """A header of 640 bytes makes the file start 0x80 0x02, as a pickle does: only the '{' that
    starts every safetensors header tells them apart."""
    data = _handmade_safetensors({"x": torch.ones(2)}, {"pad": ""})
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header["__metadata__"]["pad"] = "p" * (640 - len(json.dumps(header, separators=(",", ":"))))
    raw = json.dumps(header, separators=(",", ":")).encode()
    assert len(raw) == 640
    path = tmp_path / "pickle-like.safetensors"
    path.write_bytes(struct.pack("<Q", 640) + raw + data[8 + n:])
    assert path.read_bytes()[:2] == b"\x80\x02"
    assert jitorch.load(path)["x"].tolist() == [1.0, 1.0]


def test_bad_structure_metadata_fails_cleanly(tmp_path):
    path = tmp_path / "meta.safetensors"
    tensors = {"x": torch.ones(1)}
    bad_structures = ['{"__jt_tensor__": "missing"}', '{"__jt_bogus__": 1}', "{not json",
                      '{"__jt_dict__": 3}']
    for structure in bad_structures:
        path.write_bytes(_handmade_safetensors(tensors, {"format": "pt", "jitorch": structure}))
        with pytest.raises(CheckpointError, match="meta.safetensors: corrupt metadata"):
            jitorch.load(path)
    path.write_bytes(_handmade_safetensors(tensors, {"jitorch": 5}))
    with pytest.raises(CheckpointError, match="strings to strings"):
        jitorch.load(path)


# --- atomic saves --------------------------------------------------------------------------------

def test_interrupted_save_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    jitorch.save({"version": 1, "w": jitorch.ones(1000)}, path)
    before = path.read_bytes()
    real_write = serialization._write_payload

    def write_half_then_crash(f, header, arrays):
        sink = io.BytesIO()
        real_write(sink, header, arrays)
        f.write(sink.getvalue()[: len(sink.getvalue()) // 2])
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(serialization, "_write_payload", write_half_then_crash)
    with pytest.raises(OSError, match="simulated"):
        jitorch.save({"version": 2, "w": jitorch.zeros(1000)}, path)
    assert path.read_bytes() == before and jitorch.load(path)["version"] == 1
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]  # the temporary file was removed

    monkeypatch.setattr(serialization, "_write_payload", real_write)
    jitorch.save({"version": 2}, path)
    assert jitorch.load(path) == {"version": 2} and os.listdir(tmp_path) == ["ckpt.safetensors"]


def test_failed_fsync_also_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    jitorch.save({"version": 1}, path)

    def failing_fsync(fd):
        raise OSError("I/O error (simulated)")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="simulated"):
        jitorch.save({"version": 2}, path)
    monkeypatch.undo()
    assert jitorch.load(path) == {"version": 1} and os.listdir(tmp_path) == ["ckpt.safetensors"]


def test_save_keeps_file_permissions(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    jitorch.save({"a": 1}, path)
    os.chmod(path, 0o640)
    jitorch.save({"a": 2}, path)
    assert os.stat(path).st_mode & 0o777 == 0o640

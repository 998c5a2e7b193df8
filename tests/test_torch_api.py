"""PyTorch API that public scripts (nanoGPT, minGPT, PyTorch's examples) call, each checked against
PyTorch itself: `Tensor.type`, the legacy constructors (`torch.FloatTensor(...)`, `torch.Tensor(...)`),
`f"{loss:.4f}"`, `torch.accelerator`, and max pooling's gradient where a window's inputs tie."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import jitorch as jt
import jitorch.nn.functional as F

DTYPES = ["float32", "float64", "float16", "bfloat16", "int64", "int32", "bool"]
LEGACY = ["FloatTensor", "DoubleTensor", "HalfTensor", "BFloat16Tensor", "LongTensor", "IntTensor", "BoolTensor"]


def _both(dtype: str) -> tuple[jt.Tensor, torch.Tensor]:
    """The same small tensor in both libraries."""
    return jt.ones(2, 3, dtype=getattr(jt, dtype)), torch.ones(2, 3, dtype=getattr(torch, dtype))


def _same(got: jt.Tensor, want: torch.Tensor, values: bool = True) -> None:
    """Same dtype and shape, and the same values unless `values=False` (PyTorch's are uninitialized)."""
    assert str(got.dtype).split(".")[-1] == str(want.dtype).split(".")[-1], (got.dtype, want.dtype)
    assert tuple(got.shape) == tuple(want.shape)
    if values:
        np.testing.assert_array_equal(np.asarray(got.float().tolist()), np.asarray(want.float().tolist()))


def _of_data(args: tuple) -> bool:
    """Whether constructor arguments are data (else a shape: memory PyTorch leaves uninitialized)."""
    return len(args) == 1 and not isinstance(args[0], int)


# ---------------------------------------------------------------------------------------------
# Tensor.type


@pytest.mark.parametrize("dtype", DTYPES)
def test_type_names_the_legacy_type_like_torch(dtype):
    got, want = _both(dtype)
    assert got.type() == want.type()
    assert jt.ones(2, dtype=getattr(jt, dtype), device="meta").type() == torch.ones(
        2, dtype=getattr(torch, dtype), device="meta").type()


@pytest.mark.parametrize("target", ["float64", "int64", "bool", "bfloat16"])
def test_type_converts_to_a_dtype_a_legacy_type_or_a_type_string(target):
    got, want = _both("float32")
    legacy = LEGACY[DTYPES.index(target)]
    _same(got.type(getattr(jt, target)), want.type(getattr(torch, target)))
    _same(got.type(getattr(jt, legacy)), want.type(getattr(torch, legacy)))
    _same(got.type(f"torch.{legacy}"), want.type(f"torch.{legacy}"))
    _same(got.type(f"jitorch.{legacy}"), want.type(f"torch.{legacy}"))


def test_type_returns_self_when_nothing_changes():
    got, want = _both("float32")
    assert (got.type(jt.float32) is got) == (want.type(torch.float32) is want) is True
    assert got.type("torch.FloatTensor") is got and got.type(jt.FloatTensor) is got


@pytest.mark.parametrize("spec", ["float32", "torch.float32", "LongTensor", "torch.Foo"])
def test_type_rejects_what_torch_rejects(spec):
    with pytest.raises(ValueError, match="invalid type") as want:
        torch.ones(2).type(spec)
    with pytest.raises(ValueError, match="invalid type") as got:
        jt.ones(2).type(spec)
    assert str(got.value).startswith(str(want.value))
    with pytest.raises(TypeError, match="dtype must be a type, str, or dtype object"):
        torch.ones(2).type(5)
    with pytest.raises(TypeError, match="dtype must be a type, str, or dtype object"):
        jt.ones(2).type(5)
    with pytest.raises(ValueError, match="invalid type: 'torch.cuda.Foo'"):  # (a CPU-only torch fails otherwise)
        jt.ones(2).type("torch.cuda.Foo")


@pytest.mark.skipif(not jt.cuda.is_available(), reason="needs a CUDA device")
def test_type_string_of_a_cuda_tensor_and_the_move_there():
    x = jt.ones(2).type("torch.cuda.LongTensor")
    assert x.device.type == "cuda" and x.dtype is jt.int64
    assert x.type() == "torch.cuda.LongTensor"
    assert x.type(jt.FloatTensor).device.type == "cpu"


# ---------------------------------------------------------------------------------------------
# legacy constructors: jitorch.FloatTensor(...) & co and jitorch.Tensor(...)


@pytest.mark.parametrize("name", LEGACY)
@pytest.mark.parametrize("args", [([1, 0, 2],), ([[1.5, -2.0]],), (2, 3), (), (np.array([1.7, 0.0]),)], ids=str)
def test_legacy_constructors_match_torch(name, args):
    _same(getattr(jt, name)(*args), getattr(torch, name)(*args), values=_of_data(args))


@pytest.mark.parametrize("args", [([1, 2],), ([[1.5, -2.0]],), (2, 3), (), (np.arange(3),), (4,)], ids=str)
def test_tensor_constructor_matches_torch(args):
    got, want = jt.Tensor(*args), torch.Tensor(*args)
    _same(got, want, values=_of_data(args))
    assert type(got) is jt.Tensor


def test_tensor_constructor_takes_a_size_and_the_default_dtype():
    _same(jt.Tensor(jt.Size([2, 3])), torch.Tensor(torch.Size([2, 3])), values=False)
    jt.set_default_dtype(jt.float64)
    torch.set_default_dtype(torch.float64)
    try:
        _same(jt.Tensor([1, 2]), torch.Tensor([1, 2]))
        _same(jt.Tensor(2), torch.Tensor(2), values=False)
    finally:
        jt.set_default_dtype(jt.float32)
        torch.set_default_dtype(torch.float32)


def test_constructor_of_a_tensor_is_an_alias_with_its_history():
    x = jt.tensor([1.0, 2.0], requires_grad=True) * 1
    alias = jt.Tensor(x)
    alias.sum().backward()  # (the alias keeps x's graph, as torch's AliasBackward0 does)
    with jt.no_grad():
        alias[0] = 5.0
    assert x.tolist() == [5.0, 2.0]
    ints = jt.tensor([1, 2])
    assert jt.Tensor(ints).dtype is jt.int64 and torch.Tensor(torch.tensor([1, 2])).dtype is torch.int64
    assert jt.LongTensor(ints).tolist() == [1, 2]
    with pytest.raises(TypeError):
        torch.LongTensor(torch.ones(2))
    with pytest.raises(TypeError, match="expected a jitorch.int64 tensor for LongTensor"):
        jt.LongTensor(jt.ones(2))


@pytest.mark.parametrize("args", [(2.5,), (True,), (2, [1])], ids=str)
def test_constructors_reject_scalars_and_mixed_arguments_like_torch(args):
    with pytest.raises(TypeError):
        torch.Tensor(*args)
    with pytest.raises(TypeError, match="new\\(\\)"):
        jt.Tensor(*args)
    with pytest.raises(TypeError, match="new\\(\\)"):
        jt.FloatTensor(*args)


def test_constructors_make_cpu_tensors_only_like_torch():
    for device in ("cuda", "meta"):
        message = f"legacy constructor expects device type: cpu but device type: {device}"
        with pytest.raises(RuntimeError, match=message):
            torch.FloatTensor(2, device=device)
        with pytest.raises(RuntimeError, match=message):
            jt.FloatTensor(2, device=device)
        with pytest.raises(RuntimeError, match="legacy constructor expects device type: cpu"):
            jt.Tensor([1.0], device=device)
    _same(jt.FloatTensor(2, device="cpu"), torch.FloatTensor(2, device="cpu"), values=False)


@pytest.mark.parametrize("name", LEGACY)
@pytest.mark.parametrize("dtype", DTYPES)
def test_isinstance_with_a_legacy_type_checks_dtype_and_device_like_torch(name, dtype):
    got, want = _both(dtype)
    assert isinstance(got, getattr(jt, name)) == isinstance(want, getattr(torch, name))
    meta = torch.ones(2, dtype=getattr(torch, dtype), device="meta")
    assert isinstance(jt.ones(2, dtype=getattr(jt, dtype), device="meta"), getattr(jt, name)) == isinstance(
        meta, getattr(torch, name))


def test_legacy_types_are_not_tensor_subclasses_and_parameters_still_construct():
    assert issubclass(jt.FloatTensor, jt.Tensor) == issubclass(torch.FloatTensor, torch.Tensor) is False
    assert isinstance(jt.nn.Parameter(jt.ones(2)), jt.FloatTensor) == isinstance(
        torch.nn.Parameter(torch.ones(2)), torch.FloatTensor)
    assert repr(jt.FloatTensor) == "<class 'jitorch.FloatTensor'>"
    assert jt.FloatTensor.dtype is jt.float32 and jt.FloatTensor.is_cuda is False
    p = jt.nn.Parameter(jt.ones(3))
    assert type(p) is jt.nn.Parameter and p.requires_grad


# ---------------------------------------------------------------------------------------------
# __format__


@pytest.mark.parametrize(
    "value, spec",
    [(1.23456, ".4f"), (1.23456, ""), (-2.5, "+.2e"), (3, "d"), (3, "05d"), (True, ""), (0.125, "10.3f"), (7, ",")],
)
def test_format_of_a_0d_tensor_formats_its_value_like_torch(value, spec):
    assert format(jt.tensor(value), spec) == format(torch.tensor(value), spec)
    assert f"{jt.tensor(1.5, requires_grad=True):.3f}" == f"{torch.tensor(1.5, requires_grad=True):.3f}"


@pytest.mark.parametrize("data", [[1.0, 2.0], [1.5], [[3]]], ids=str)
def test_format_of_other_tensors_is_str_and_refuses_a_spec_like_torch(data):
    assert format(jt.tensor(data), "") == str(jt.tensor(data))
    assert f"{torch.tensor(data)}" == str(torch.tensor(data))
    with pytest.raises(TypeError, match="unsupported format string passed to Tensor.__format__"):
        f"{torch.tensor(data):.2f}"
    with pytest.raises(TypeError, match="unsupported format string passed to Tensor.__format__"):
        f"{jt.tensor(data):.2f}"


# ---------------------------------------------------------------------------------------------
# jitorch.accelerator


def test_accelerator_is_cuda():
    assert jt.accelerator.is_available() == jt.cuda.is_available()
    assert jt.accelerator.device_count() == jt.cuda.device_count()
    acc = jt.accelerator.current_accelerator()
    assert acc == (jt.device("cuda") if jt.cuda.is_available() else None)
    assert jt.accelerator.current_accelerator(check_available=True) == acc


@pytest.mark.skipif(jt.cuda.is_available() or torch.accelerator.is_available(), reason="a machine without one")
def test_accelerator_without_one_answers_and_raises_like_torch():
    message = "Cannot access accelerator device when none is available"
    assert jt.accelerator.is_available() == torch.accelerator.is_available()
    assert jt.accelerator.current_accelerator() == torch.accelerator.current_accelerator() is None
    assert jt.accelerator.device_count() == torch.accelerator.device_count() == 0
    for call in (lambda a: a.current_device_index(), lambda a: a.set_device_index(0), lambda a: a.synchronize()):
        with pytest.raises(RuntimeError, match=message):
            call(torch.accelerator)
        with pytest.raises(RuntimeError, match=message):
            call(jt.accelerator)


@pytest.mark.skipif(not jt.cuda.is_available(), reason="needs a CUDA device")
def test_accelerator_delegates_to_cuda():
    assert jt.accelerator.current_device_index() == jt.cuda.current_device()
    jt.accelerator.set_device_index(0)
    assert jt.accelerator.current_device_index() == 0
    jt.accelerator.synchronize()
    x = jt.ones(2, device=jt.accelerator.current_accelerator())
    assert x.device == jt.device("cuda:0")


# ---------------------------------------------------------------------------------------------
# max_pool2d: ties send the window's gradient to its first maximum


def _checkerboard(shape: tuple) -> np.ndarray:
    h, w = shape[-2:]
    board = (np.indices((h, w)).sum(0) % 2).astype(np.float32)
    return np.broadcast_to(board, shape).copy()


TIED_INPUTS = {
    "all_equal": lambda shape: np.full(shape, 0.5, np.float32),
    "checkerboard": _checkerboard,
    "few_values": lambda shape: np.random.default_rng(0).integers(0, 2, shape).astype(np.float32),
}


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("pool", [(2, 2, 0), (3, 1, 0), (3, 2, 1), (2, 1, 0)], ids=lambda p: "k{}s{}p{}".format(*p))
@pytest.mark.parametrize("inputs", list(TIED_INPUTS))
@pytest.mark.parametrize("shape", [(2, 3, 6, 8), (3, 7, 7)], ids=str)
def test_max_pool2d_gradient_over_ties_matches_torch(inputs, pool, compiled, shape):
    kernel, stride, padding = pool
    data = TIED_INPUTS[inputs](shape)
    want_x = torch.tensor(data, requires_grad=True)
    want = torch.nn.functional.max_pool2d(want_x, kernel, stride, padding)
    cotangent = np.random.default_rng(1).standard_normal(tuple(want.shape)).astype(np.float32)
    want.backward(torch.tensor(cotangent))

    def pool_fn(x):
        return F.max_pool2d(x, kernel, stride, padding)

    got_x = jt.tensor(data, requires_grad=True)
    got = (jt.compile(pool_fn) if compiled else pool_fn)(got_x)
    got.backward(jt.tensor(cotangent))
    np.testing.assert_array_equal(got.detach().numpy(), want.detach().numpy())
    np.testing.assert_allclose(got_x.grad.numpy(), want_x.grad.numpy(), rtol=1e-6, atol=1e-6)


# --- what scripts ask before they pick a device, and torch.cuda.amp's old spellings -----------------


def test_scripts_can_ask_for_mps_and_set_cudnn_switches():
    assert jt.backends.mps.is_available() is False and jt.backends.mps.is_built() is False
    jt.backends.cudnn.benchmark = True
    try:
        assert jt.backends.cudnn.benchmark is True and jt.backends.cudnn.is_available() is False
    finally:
        jt.backends.cudnn.benchmark = False


def test_torch_cuda_amp_spellings_are_the_amp_ones_on_cuda():
    from jitorch.cuda.amp import GradScaler, autocast

    region = autocast(dtype=jt.bfloat16)
    assert region.device_type == "cuda" and region.fast_dtype is jt.bfloat16
    assert jt.cuda.amp.autocast is autocast and issubclass(GradScaler, jt.amp.GradScaler)
    scaler = GradScaler(enabled=False)  # (enabled on a machine without CUDA warns and disables, as PyTorch's)
    assert scaler.get_scale() == 1.0 and not scaler.is_enabled()


def test_what_single_process_scripts_import_for_multi_device_runs():
    """nanoGPT imports DDP and init_process_group, dcgan nn.parallel, word_language_model torch.onnx:
    the names exist; one-device DataParallel runs its module (state dict prefixed `module.`, as
    PyTorch's); what would need several processes raises saying so."""
    from jitorch.distributed import destroy_process_group, init_process_group  # noqa: F401
    from jitorch.nn.parallel import DistributedDataParallel

    assert not jt.distributed.is_available() and not jt.distributed.is_initialized()
    with pytest.raises(RuntimeError, match="does not train across processes"):
        init_process_group(backend="nccl")
    linear = jt.nn.Linear(3, 2)
    wrapped = jt.nn.DataParallel(linear)
    x = jt.randn(4, 3)
    np.testing.assert_array_equal(wrapped(x).detach().numpy(), linear(x).detach().numpy())
    assert list(wrapped.state_dict()) == list(torch.nn.DataParallel(torch.nn.Linear(3, 2)).state_dict())
    with pytest.raises(RuntimeError, match="does not train across processes"):
        DistributedDataParallel(linear)
    with pytest.raises(NotImplementedError, match="cannot export ONNX"):
        jt.onnx.export(linear, x, "model.onnx")


def test_the_deprecated_alpha_first_add_and_sub():
    p, g = jt.ones(3), jt.full((3,), 2.0)
    tp, tg = torch.ones(3), torch.full((3,), 2.0)
    with pytest.warns(UserWarning, match="deprecated"):
        p.add_(-0.5, g)
    with pytest.warns(UserWarning):
        tp.add_(-0.5, tg)
    np.testing.assert_array_equal(p.numpy(), tp.numpy())
    with pytest.warns(UserWarning, match="deprecated"):
        np.testing.assert_array_equal(jt.sub(jt.ones(2), 2, jt.ones(2)).numpy(), [-1.0, -1.0])

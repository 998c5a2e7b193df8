"""The Tensor: a numpy buffer (or a traced value), its autograd fields, and the Python protocols.

Math methods (`x.exp()`, `x.sum(dim)`, ...) are the functions of `jitorch.ops`, attached to the
class at import time (`ops.install_methods`), so each op is written once and exists both as
`jitorch.exp(x)` and `x.exp()`.
"""

from __future__ import annotations

import numpy as np

from . import dtypes as _dt
from ._trace_state import grad_mode, trace_state
from .backends import Backend, backend_for
from .device import Device, cpu
from .errors import concrete_value_error

# how a view was made (the last field of `Tensor._view_of`, else the name of the function that
# returned it among other views): what an in-place op on it may do
VIEW_GRAD, VIEW_NO_GRAD = "grad mode", "no_grad mode"


def mark_multi_output_views(views: tuple[Tensor, ...], fn: str) -> tuple[Tensor, ...]:
    """Mark the views one call of `fn` returned (unbind, split, chunk) so that autograd refuses an
    in-place op on them, as PyTorch does: the call's gradient treats them as one output."""
    for v in views:
        view_of = v._view_of
        if view_of is not None and view_of[2] == VIEW_GRAD:
            v._view_of = (view_of[0], view_of[1], fn)
    return views


def move_retain(old, t: Tensor) -> None:
    """`t.retain_grad()` follows t through an in-place write, as in PyTorch: from its old grad_fn
    `old` to its new one."""
    if old is not None and old.retain is not None and old.retain() is t and t.grad_fn is not old:
        t.grad_fn.retain, old.retain = old.retain, None


class _Counter:
    """A version counter, shared by a tensor and its views; in-place ops bump it. `history` counts
    the in-place writes into that storage that autograd recorded: a view whose `_hist` differs has a
    stale grad_fn and remakes it from its base (`_refresh_history`) before it is used."""

    __slots__ = ("value", "history")

    def __init__(self) -> None:
        self.value = 0
        self.history = 0


def view_record(src: Tensor, prim, params: dict, out: Tensor) -> None:
    """Note on `out`, a view of `src`'s storage made by `prim`, how autograd can make it again from
    its differentiable base: (base, ((prim, params), ...), how it was made: VIEW_GRAD, VIEW_NO_GRAD,
    or the name of the function that returned it among several views). A tensor from
    `detach()` is not a differentiable view, so it is the base of the views taken from it."""
    parent = src._view_of
    made = VIEW_GRAD if grad_mode.enabled else VIEW_NO_GRAD
    if parent is None or src._base is None:
        out._view_of = (src, ((prim, params),), made)
    else:
        out._view_of = (parent[0], parent[1] + ((prim, params),), made if parent[2] == VIEW_GRAD else parent[2])
    history = out._ver.history
    if history:
        out._hist = history


class Tensor:
    """An n-dimensional array that records operations for autograd.

    Make one with `jitorch.tensor(data)`, `jitorch.zeros(...)`, `jitorch.randn(...)`, ...; old scripts'
    `Tensor(2, 3)` and `Tensor([1., 2.])` are PyTorch's legacy constructor (`ops._tensor_new`, installed
    as `__new__` with the methods). jitorch's own code makes tensors with `Tensor._make`, which skips it.
    """

    # Class-level defaults keep the constructor to one or two attribute writes.
    requires_grad = False
    _grad = None
    grad_fn = None
    _ver = None
    _base = None
    _hooks = None
    _device = cpu
    _value = None  # the ir.Value of a traced tensor (jitorch.compile)
    _born = None  # the mark of the trace that created this tensor, if one did (jitorch.compile)
    _view = None  # a traced view: how it was made from its base (jitorch.ir.trace._View)
    _view_of = None  # a view, for autograd: (differentiable base, view ops from it, how made): view_record
    _hist = 0  # a view: the storage's `_Counter.history` its grad_fn reflects
    _contig = True  # a traced tensor: whether eagerly its array would be C-contiguous
    _dynamic_dims = None  # dims `jitorch.mark_dynamic` made symbolic for compiled functions (a frozenset)
    __array_priority__ = 1000  # numpy scalars defer to Tensor's reflected operators

    @staticmethod
    def _make(data: np.ndarray, grad_fn=None) -> Tensor:
        t = object.__new__(Tensor)
        t._data = data
        if grad_fn is not None:
            t.grad_fn = grad_fn
            t.requires_grad = True
        tracer = trace_state.tracer
        if tracer is not None:  # made while this thread traces: a constant of that trace
            t._born = tracer.born_mark
        return t

    def _backend(self) -> Backend:
        """The backend of this tensor's device: its buffers are that backend's arrays."""
        return backend_for(self._device.type)

    # --- versions -------------------------------------------------------------------------
    def _counter(self) -> _Counter:
        c = self._ver
        if c is None:
            c = self._ver = _Counter()
        return c

    def _version_value(self) -> int:
        c = self._ver
        return 0 if c is None else c.value

    @property
    def _version(self) -> int:
        return self._version_value()

    def _bump_version(self) -> None:
        self._counter().value += 1

    # --- metadata -------------------------------------------------------------------------
    def _sizes(self) -> tuple:
        """The shape: its symbolic sizes for a traced tensor of a dynamic-shape trace (see
        `jitorch.ir.symbolic`), else the buffer's."""
        value = self._value
        return value.shape if value is not None and value.symbolic else self._data.shape

    @property
    def shape(self) -> Size:
        value = self._value  # (as `_sizes`, inline: shapes are read on every op)
        return Size(value.shape if value is not None and value.symbolic else self._data.shape)

    def size(self, dim: int | None = None):
        """The shape, or one dimension's size."""
        if dim is None:
            return Size(self._sizes())
        return self._sizes()[_wrap_dim(dim, self._data.ndim)]

    @property
    def dtype(self) -> _dt.DType:
        return _dt.from_numpy_dtype(self._data.dtype)

    @property
    def device(self) -> Device:
        return self._device

    @property
    def ndim(self) -> int:
        return self._data.ndim

    def dim(self) -> int:
        return self._data.ndim

    def numel(self) -> int:
        if self._value is not None and self._value.symbolic:
            return self.shape.numel()
        return int(self._data.size)

    nelement = numel

    def element_size(self) -> int:
        return self._data.dtype.itemsize

    def stride(self, dim: int | None = None):
        """Strides in elements, as PyTorch reports them."""
        st = tuple(s // self._data.itemsize for s in self._data.strides)
        return st if dim is None else st[_wrap_dim(dim, self._data.ndim)]

    def is_contiguous(self) -> bool:
        if self._value is not None:
            return self._contig
        return bool(self._data.flags.c_contiguous)

    @property
    def is_leaf(self) -> bool:
        if self._base is not None and self._hist != self._ver.history:
            self._refresh_history()  # a view whose base was written in place since it was made
        return self.grad_fn is None

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    @property
    def is_meta(self) -> bool:
        return self._device.type == "meta"

    @property
    def data(self) -> Tensor:
        """This tensor's values without autograd history (shares storage)."""
        return self.detach()

    @data.setter
    def data(self, other: Tensor) -> None:
        self._data = other._data
        self._bump_version()

    # --- autograd -------------------------------------------------------------------------
    @property
    def grad(self) -> Tensor | None:
        """The accumulated gradient (None until a backward pass reaches this leaf)."""
        tracer = trace_state.tracer
        if tracer is not None:
            return tracer.read_grad(self)  # inside jitorch.compile `.grad` is functionalized
        return self._grad

    @grad.setter
    def grad(self, value: Tensor | None) -> None:
        tracer = trace_state.tracer
        if tracer is not None:
            tracer.write_grad(self, value)
            return
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(f"assigned grad expected to be a Tensor or None but got {type(value).__name__}")
        if value is not None and value.shape != self.shape:
            raise RuntimeError(
                f"assigned grad has data of a different size: {tuple(value.shape)} for a tensor of shape "
                f"{tuple(self.shape)}"
            )
        self._grad = value

    def detach(self) -> Tensor:
        """A tensor sharing this one's data, cut from the autograd graph."""
        out = Tensor._make(self._data)
        out._ver = self._counter()
        out._base = self._base if self._base is not None else self
        out._device = self._device
        if self._value is not None:
            tracer = trace_state.tracer
            if tracer is not None:
                tracer.detach(self, out)
            else:
                out._value = self._value
        return out

    def detach_(self) -> Tensor:
        self.grad_fn = None
        self.requires_grad = False
        return self

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        """Set whether autograd records operations on this leaf tensor."""
        if self.grad_fn is not None and not requires_grad:
            raise RuntimeError(
                "you can only change requires_grad flags of leaf variables; use .detach() for a "
                "non-leaf tensor"
            )
        if requires_grad and not self.dtype.is_floating_point:
            raise RuntimeError(
                f"only tensors of floating point dtype can require gradients, got {self.dtype}"
            )
        self.requires_grad = requires_grad
        return self

    # --- in place -------------------------------------------------------------------------
    def _alias(self) -> Tensor:
        """The current value of self as a separate graph node, for in-place ops to read from.

        Eagerly it is a snapshot (a copy with its own version counter): the op may save its input
        for backward (`x.mul_(y)` needs the old x), and the write into self must not clobber it.
        """
        # a traced value is immutable (the tracer rebinds self to the result) and a meta tensor has
        # no data to clobber: both can share the buffer; either way the alias has its own version
        shared = self._value is not None or self._device.type == "meta"
        a = Tensor._make(self._data if shared else self._backend().copy(self._data), grad_fn=self.grad_fn)
        a.requires_grad = self.requires_grad
        a._device = self._device
        a._value = self._value
        return a

    def _inplace_source(self, *others) -> tuple[Tensor, bool]:
        """Check an in-place op is allowed; return the tensor it should read `self` from."""
        if self._base is not None and self._hist != self._ver.history:
            self._refresh_history()  # its base was written in place since its grad_fn was made
        needs_graph = grad_mode.enabled and (
            self.requires_grad or any(getattr(o, "requires_grad", False) for o in others)
        )
        if not needs_graph:
            return self, False
        if self.requires_grad and self.grad_fn is None:
            raise RuntimeError(
                f"a leaf tensor that requires grad (shape {tuple(self.shape)}) is being used in an "
                "in-place operation. Wrap the update in `with jitorch.no_grad():` (as optimizers "
                "do), or work on a clone."
            )
        if self._view_of is not None and self._base is not None:
            self._check_view_write()
        return self._alias(), True

    def _check_view_write(self) -> None:
        """Raise, as PyTorch does, for an in-place op under autograd on a view that must not take one."""
        base, _, made = self._view_of
        shape = tuple(self.shape)
        if base.requires_grad and base.grad_fn is None:
            raise RuntimeError(
                f"a view (shape {shape}) of a leaf tensor that requires grad (shape {tuple(base.shape)}) is "
                "being used in an in-place operation. Wrap the update in `with jitorch.no_grad():`, or "
                "write into a clone of the leaf (y = x.clone(); y[...].op_())."
            )
        if made not in (VIEW_GRAD, VIEW_NO_GRAD):
            raise RuntimeError(
                f"a view (shape {shape}) that {made}() returned among others is being modified "
                "in place: autograd treats the views of such a call as one output and does not allow it. "
                "Use the out-of-place op, or take the view with indexing or narrow() instead."
            )
        if made == VIEW_NO_GRAD:
            raise RuntimeError(
                f"a view (shape {shape}) was created in no_grad mode and is being modified in place with "
                "grad mode enabled: it is ambiguous whether autograd should record the write. Make the "
                "view and write it both inside the no_grad block, or both outside it."
            )
        if self._value is None and any(st == 0 and n > 1 for st, n in zip(self._data.strides, self._data.shape)):
            raise RuntimeError(
                f"unsupported in-place operation on a tensor of shape {shape}: it is an expanded view "
                "where several elements share one memory location. Use .clone() first."
            )

    def _assign(self, result: Tensor, graph: bool) -> Tensor:
        """Write `result` into self's storage: the one path every in-place op ends in.

        Under autograd (`graph`) self's history becomes result's. When self is a view, its base's
        history becomes "the old base with this view's region replaced by result" (PyTorch's
        CopySlices), and views of that storage remake their grad_fn from it when next used.
        """
        if result.shape != self.shape:
            raise RuntimeError(
                f"output with shape {tuple(self.shape)} doesn't match the broadcast shape "
                f"{tuple(result.shape)} of an in-place operation"
            )
        if result._data.dtype != self._data.dtype:
            if result.dtype.category > self.dtype.category:
                raise RuntimeError(
                    f"result type {result.dtype.name} can't be cast to the desired output type "
                    f"{self.dtype.name} of an in-place operation; convert with .to() first"
                )
            result = result.to(self.dtype)
        if trace_state.tracer is not None:
            trace_state.tracer.assign(self, result)  # functionalized; bumps the version
        else:
            self._write(result._data)
        if graph:
            node = result.grad_fn
            counter = self._counter()
            retained = self.grad_fn
            if node is not None:
                node.out_data = self._data
                if node.out_version is not None:
                    node.out_version = (counter, counter.value)
            counter.history += 1  # every other view of this storage now has a stale grad_fn
            if self._view_of is not None and self._base is not None:
                self._rewrite_view_history(node)
            elif node is not None:
                self.grad_fn = node
                self.requires_grad = True
            self._hist = counter.history
            move_retain(retained, self)
        return self

    def _write(self, data: np.ndarray) -> None:
        try:
            self._backend().copy_into(self._data, data)
        except ValueError as err:
            raise RuntimeError(
                f"unsupported in-place operation on a tensor of shape {tuple(self.shape)}: it is an "
                f"expanded view where several elements share one memory location ({err}). "
                "Use .clone() first."
            ) from None
        self._bump_version()

    def _inplace(self, fn, *args) -> Tensor:
        src, graph = self._inplace_source(*args)
        args = tuple(src if a is self else a for a in args)
        return self._assign(fn(src, *args), graph)

    # --- conversion -----------------------------------------------------------------------
    def _buffer(self, what: str):
        """This tensor's buffer, for `what`: an error for a traced tensor or a meta tensor (no data)."""
        if self._value is not None:
            raise concrete_value_error(self, what)
        if self._device.type == "meta":
            raise RuntimeError(f"{what} needs data, but this tensor is on the meta device (no data)")
        return self._data

    def _concrete(self, what: str) -> np.ndarray:
        """The values in host memory: the array itself on the CPU, a copy from another device (which
        waits for the device's queued work, then raises any index check queued on it that failed)."""
        backend = self._backend()
        host = backend.to_numpy(self._buffer(what))
        backend.finish_checks()
        tracer = trace_state.tracer
        if tracer is not None and self._born is not tracer.born_mark:
            tracer.note_host_read(self, what)  # (a tensor from outside: the program depends on its values)
        return host

    def _host_only(self) -> None:
        if self._device is not cpu:
            raise TypeError(f"can't convert {self._device} device type tensor to numpy. Use Tensor.cpu() to "
                            "copy the tensor to host memory first.")

    def numpy(self, force: bool = False) -> np.ndarray:
        """The data as a numpy array sharing memory. As in PyTorch it refuses a tensor that requires
        grad or lives on another device, unless `force=True` (then it may be a copy)."""
        self._buffer(".numpy()")
        if not force:
            self._host_only()
            if self.requires_grad:
                raise RuntimeError(
                    "Can't call numpy() on a tensor that requires grad. Use tensor.detach().numpy() instead."
                )
        return self._concrete(".numpy()")

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        self._buffer("converting to a numpy array")
        self._host_only()
        data = self._concrete("converting to a numpy array")
        return data if dtype is None else data.astype(dtype)

    def item(self):
        """The value of a one-element tensor as a Python number (from any device: it waits for it)."""
        data = self._buffer(".item()")
        if data.size != 1:
            raise RuntimeError(
                f"a Tensor with {data.size} elements cannot be converted to a Python scalar "
                f"(shape {tuple(data.shape)}); index or reduce it first"
            )
        data = self._concrete(".item()")
        return data.reshape(()).item() if data.dtype != _dt.bfloat16.np else float(data.reshape(()))

    def tolist(self):
        """The data as (nested) Python lists (from any device: it waits for it)."""
        data = self._concrete(".tolist()")
        if data.dtype == _dt.bfloat16.np:
            data = data.astype(np.float32)
        return data.tolist()

    @property
    def is_cuda(self) -> bool:
        return self._device.type == "cuda"

    @property
    def is_cpu(self) -> bool:
        return self._device.type == "cpu"

    def get_device(self) -> int:
        """The index of this tensor's CUDA device, or -1 on the CPU (as PyTorch)."""
        return -1 if self._device.index is None else self._device.index

    def __bool__(self) -> bool:
        data = self._concrete("bool(tensor) (an `if` or `while` on a tensor)")
        if data.size != 1:
            raise RuntimeError(
                f"Boolean value of Tensor with {data.size} elements is ambiguous; use .any() or .all()"
            )
        return bool(data.reshape(()))

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __index__(self) -> int:
        if self.dtype.is_floating_point or self.numel() != 1:
            raise TypeError("only integer tensors of a single element can be converted to an index")
        return int(self.item())

    def __len__(self) -> int:
        if self._data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self._sizes()[0]

    def __iter__(self):
        if self._data.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self._data.shape[0]))

    def __hash__(self) -> int:
        return id(self)

    def __dlpack__(self, stream=None, **kwargs):
        """A DLPack capsule of this tensor's buffer, shared without a copy (a device array on a GPU)."""
        data = self._buffer("__dlpack__")
        if self._device is not cpu:
            return data.__dlpack__(stream=stream, **kwargs)
        if data.dtype == _dt.bfloat16.np:  # numpy cannot export bfloat16 itself
            from ._dlpack import export_bfloat16

            return export_bfloat16(data, **kwargs)
        return data.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._buffer("__dlpack_device__").__dlpack_device__()

    def __repr__(self) -> str:
        from .printing import tensor_repr

        return tensor_repr(self)

    def __format__(self, format_spec: str) -> str:
        """`f"{loss:.4f}"`: a 0-d tensor formats as its Python number, as in PyTorch. Any other tensor
        takes only an empty spec (then it prints as `str(t)`); a spec on it raises TypeError, as
        PyTorch's does: index or `.item()` the value first."""
        if self.ndim == 0 and self._device.type != "meta" and type(self) is Tensor:
            return format(self.item(), format_spec)
        return object.__format__(self, format_spec)

    def __reduce_ex__(self, protocol):
        raise TypeError("jitorch tensors are not pickled; use jitorch.save (safetensors) instead")

    def __deepcopy__(self, memo):
        out = Tensor._make(self._backend().copy(self._data))
        out._device = self._device
        out.requires_grad = self.requires_grad and self.grad_fn is None
        if self.grad is not None:
            out.grad = self.grad.__deepcopy__(memo)
        memo[id(self)] = out
        return out


class Size(tuple):
    """A shape: a tuple of ints that prints like PyTorch's `torch.Size([2, 3])`."""

    def __repr__(self) -> str:
        return f"jitorch.Size({list(self)})"

    def numel(self) -> int:
        n = 1
        for d in self:
            n *= d
        return n


def _wrap_dim(dim: int, ndim: int) -> int:
    """A dimension index in [0, ndim) (a 0-d tensor accepts 0 and -1, as in PyTorch)."""
    if 0 <= dim < ndim:
        return dim
    size = ndim if ndim else 1
    if not -size <= dim < size:
        raise IndexError(
            f"Dimension out of range (expected to be in range of [{-size}, {size - 1}], but got {dim})"
        )
    return dim % size

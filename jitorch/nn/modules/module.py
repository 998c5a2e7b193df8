"""`Module`: the base class of every layer; it owns parameters, buffers and submodules by name."""

from __future__ import annotations

import itertools
from collections import OrderedDict, namedtuple
from collections.abc import Callable, Iterator

import numpy as np

from ..._trace_state import note_module_change, trace_state
from ...autograd import no_grad
from ...tensor import Tensor
from ..parameter import Buffer, Parameter

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class RemovableHandle:
    """Returned by `register_*_hook`; `.remove()` unregisters the hook."""

    _next_id = itertools.count()

    def __init__(self, hooks: dict) -> None:
        self._hooks = hooks
        self.id = next(RemovableHandle._next_id)

    def remove(self) -> None:
        self._hooks.pop(self.id, None)

    def __enter__(self) -> RemovableHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class _Registry(dict):
    """A module's parameters, buffers, children or hooks by name: a dict that counts its changes
    (`note_module_change`), however they are made (container methods, hook handles, user code)."""

    def __setitem__(self, key, value) -> None:
        note_module_change()
        super().__setitem__(key, value)

    def __delitem__(self, key) -> None:
        note_module_change()
        super().__delitem__(key)

    def pop(self, *args):
        note_module_change()
        return super().pop(*args)

    def popitem(self):
        note_module_change()
        return super().popitem()

    def clear(self) -> None:
        note_module_change()
        super().clear()

    def update(self, *args, **kwargs) -> None:
        note_module_change()
        super().update(*args, **kwargs)

    def setdefault(self, key, default=None):
        note_module_change()
        return super().setdefault(key, default)


def _as_tensor_value(value, key: str) -> Tensor:
    """A state_dict value (jitorch Tensor, numpy array or anything with __array__) as a Tensor."""
    if isinstance(value, Tensor):
        return value.detach()
    try:
        return Tensor._make(np.asarray(value))
    except Exception as err:  # noqa: BLE001 - name the key whatever the converter raised
        raise TypeError(
            f"state_dict value for {key!r} is not a tensor or array ({type(value).__name__})"
        ) from err


def _addindent(text: str, spaces: int) -> str:
    lines = text.split("\n")
    if len(lines) == 1:
        return text
    return lines[0] + "\n" + "\n".join(" " * spaces + line for line in lines[1:])


class Module:
    """Base class for all layers. Subclasses set attributes in `__init__` and define `forward`.

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)
        def forward(self, x):
            return self.fc(x).relu()
    """

    training: bool
    _version = 1

    def __init__(self, *args, **kwargs) -> None:
        if args or kwargs:
            raise TypeError(f"{type(self).__name__}.__init__() got unexpected arguments")
        d = self.__dict__
        d["training"] = True
        d["_parameters"] = _Registry()
        d["_buffers"] = _Registry()
        d["_non_persistent_buffers"] = set()
        d["_modules"] = _Registry()
        d["_forward_hooks"] = _Registry()
        d["_forward_pre_hooks"] = _Registry()

    def forward(self, *args, **kwargs):
        raise NotImplementedError(
            f'Module [{type(self).__name__}] is missing the required "forward" function'
        )

    # --- calling --------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        compiled = self.__dict__.get("_compiled_call")  # (`compile()` in place)
        if compiled is not None:
            return compiled(*args, **kwargs)
        return self._call_impl(*args, **kwargs)

    def _call_impl(self, *args, **kwargs):
        """A call as written: the pre-hooks, forward, the hooks."""
        if trace_state.tracer is not None:
            trace_state.tracer.note_module(self)  # jitorch.compile guards on what the forward reads
        if not self._forward_pre_hooks and not self._forward_hooks:
            return self.forward(*args, **kwargs)
        for hook in list(self._forward_pre_hooks.values()):
            result = hook(self, args)
            if result is not None:
                args = result if isinstance(result, tuple) else (result,)
        out = self.forward(*args, **kwargs)
        for hook in list(self._forward_hooks.values()):
            result = hook(self, args, out)
            if result is not None:
                out = result
        return out

    def compile(self, *args, **kwargs) -> None:
        """Compile this module's calls in place, as PyTorch's `Module.compile`: `model(x)` runs the
        compiled forward from now on; the module, its attributes and `state_dict()` keys stay as
        they are (unlike `jitorch.compile(model)`, which wraps it). Arguments: `jitorch.compile`'s."""
        from ...compiler import compile as compile_function  # (the compiler sits above nn)

        kwargs.setdefault("name", type(self).__name__)
        self.__dict__["_compiled_call"] = compile_function(self._call_impl, *args, **kwargs)

    def _wrapped_by_compile(self, compiled: Callable) -> OptimizedModule:
        """What `jitorch.compile(self)` returns: this module wrapped, its calls running `compiled`."""
        return OptimizedModule(self, compiled)

    def register_forward_pre_hook(self, hook: Callable) -> RemovableHandle:
        """`hook(module, args)` runs before forward; it may return replacement args."""
        handle = RemovableHandle(self._forward_pre_hooks)
        self._forward_pre_hooks[handle.id] = hook
        return handle

    def register_forward_hook(self, hook: Callable) -> RemovableHandle:
        """`hook(module, args, output)` runs after forward; it may return a replacement output."""
        handle = RemovableHandle(self._forward_hooks)
        self._forward_hooks[handle.id] = hook
        return handle

    # --- attributes -----------------------------------------------------------------------
    def __setattr__(self, name: str, value) -> None:
        note_module_change()  # a compiled program may have baked the old value in
        d = self.__dict__
        params, modules, buffers = d.get("_parameters"), d.get("_modules"), d.get("_buffers")
        if isinstance(value, (Parameter, Module, Buffer)) and params is None:
            raise AttributeError("cannot assign parameters, buffers or modules before Module.__init__() call")
        if isinstance(value, Parameter):
            self._remove_plain(name)
            self.register_parameter(name, value)
        elif params is not None and name in params:
            if value is not None:
                raise TypeError(
                    f"cannot assign '{type(value).__name__}' as parameter '{name}' "
                    "(jitorch.nn.Parameter or None expected)"
                )
            params[name] = None
        elif isinstance(value, Module):
            self._remove_plain(name)
            modules[name] = value
        elif modules is not None and name in modules:
            if value is not None:
                raise TypeError(
                    f"cannot assign '{type(value).__name__}' as child module '{name}' "
                    "(jitorch.nn.Module or None expected)"
                )
            modules[name] = None
        elif isinstance(value, Buffer):
            self._remove_plain(name)
            self.register_buffer(name, Tensor._make(value._data), value.persistent)
        elif buffers is not None and name in buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(
                    f"cannot assign '{type(value).__name__}' as buffer '{name}' (Tensor or None expected)"
                )
            buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def _set_children(self, children: dict) -> None:
        """Replace the children registry wholesale (containers renumber after an insert or delete)."""
        note_module_change()
        self.__dict__["_modules"] = _Registry(children)

    def _remove_plain(self, name: str) -> None:
        self.__dict__.pop(name, None)
        for table in ("_parameters", "_buffers", "_modules"):
            self.__dict__[table].pop(name, None)
        self.__dict__["_non_persistent_buffers"].discard(name)

    def __getattr__(self, name: str):
        d = self.__dict__
        for table in ("_parameters", "_buffers", "_modules"):
            t = d.get(table)
            if t is not None and name in t:
                return t[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name: str) -> None:
        note_module_change()
        for table in ("_parameters", "_buffers", "_modules"):
            if name in self.__dict__[table]:
                del self.__dict__[table][name]
                self.__dict__["_non_persistent_buffers"].discard(name)
                return
        object.__delattr__(self, name)

    def __dir__(self):
        return sorted(
            set(super().__dir__()) | set(self._parameters) | set(self._buffers) | set(self._modules)
        )

    def _check_name(self, name: str, kind: str) -> None:
        if not isinstance(name, str):
            raise TypeError(f"{kind} name should be a string. Got {type(name).__name__}")
        if "." in name or name == "":
            raise KeyError(f"{kind} name can't contain \".\" and can't be empty, got {name!r}")
        if (
            hasattr(self, name)
            and name not in self._parameters
            and name not in self._buffers
            and (name not in self._modules)
        ):
            raise KeyError(f"attribute '{name}' already exists")

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Add a parameter (or None, a declared but absent one such as a disabled bias)."""
        if "_parameters" not in self.__dict__:
            raise AttributeError("cannot assign parameter before Module.__init__() call")
        self._check_name(name, "parameter")
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(
                f"cannot assign '{type(param).__name__}' object to parameter '{name}' "
                "(jitorch.nn.Parameter or "
                "None required)"
            )
        self._parameters[name] = param

    def register_buffer(self, name: str, tensor: Tensor | None, persistent: bool = True) -> None:
        """Add a tensor that is state but not a parameter (running statistics); `persistent=False`
        keeps it out of `state_dict`."""
        if "_buffers" not in self.__dict__:
            raise AttributeError("cannot assign buffer before Module.__init__() call")
        self._check_name(name, "buffer")
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(
                f"cannot assign '{type(tensor).__name__}' object to buffer '{name}' (Tensor or None required)"
            )
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent_buffers.discard(name)
        else:
            self._non_persistent_buffers.add(name)

    def add_module(self, name: str, module: Module | None) -> None:
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module subclass")
        self._check_name(name, "module")
        self._modules[name] = module

    register_module = add_module

    def get_submodule(self, target: str) -> Module:
        mod = self
        for part in target.split(".") if target else ():
            if part not in mod._modules:
                raise AttributeError(f"{type(mod).__name__} has no attribute `{part}`")
            mod = mod._modules[part]
        return mod

    def get_parameter(self, target: str) -> Parameter:
        prefix, _, name = target.rpartition(".")
        return self.get_submodule(prefix)._parameters[name]

    # --- traversal ------------------------------------------------------------------------
    def named_modules(self, memo: set | None = None, prefix: str = "", remove_duplicate: bool = True):
        """(name, module) for this module and every descendant, depth first; shared ones once."""
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is None:
                continue
            yield from child.named_modules(memo, prefix + ("." if prefix else "") + name, remove_duplicate)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator[tuple[str, Module]]:
        seen = set()
        for name, m in self._modules.items():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def _named_members(self, table: str, prefix: str, recurse: bool, remove_duplicate: bool = True):
        seen = set()
        mods = (
            self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate)
            if recurse
            else [(prefix, self)]
        )
        for mod_prefix, mod in mods:
            for name, value in getattr(mod, table).items():
                if value is None or (remove_duplicate and id(value) in seen):
                    continue
                seen.add(id(value))
                yield mod_prefix + ("." if mod_prefix else "") + name, value

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, parameter) pairs; a parameter shared by two modules appears once."""
        yield from self._named_members("_parameters", prefix, recurse, remove_duplicate)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Tensor]]:
        yield from self._named_members("_buffers", prefix, recurse, remove_duplicate)

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    # --- state ----------------------------------------------------------------------------
    def state_dict(self, destination: dict | None = None, prefix: str = "", keep_vars: bool = False) -> dict:
        """Parameters and persistent buffers by dotted name (detached tensors sharing storage)."""
        out = OrderedDict() if destination is None else destination
        for name, p in self._parameters.items():
            if p is not None:
                out[prefix + name] = p if keep_vars else p.detach()
        for name, b in self._buffers.items():
            if b is not None and name not in self._non_persistent_buffers:
                out[prefix + name] = b if keep_vars else b.detach()
        for name, m in self._modules.items():
            if m is not None:
                m.state_dict(out, prefix + name + ".", keep_vars)
        return out

    def _local_state(self) -> dict[str, Tensor]:
        local = {n: p for n, p in self._parameters.items() if p is not None}
        local.update(
            {
                n: b
                for n, b in self._buffers.items()
                if b is not None and n not in self._non_persistent_buffers
            }
        )
        return local

    def load_state_dict(
        self, state_dict: dict, strict: bool = True, assign: bool = False
    ) -> IncompatibleKeys:
        """Copy values into this module's parameters and buffers by name.

        With `strict=True`, missing or unexpected keys raise PyTorch's error; shape mismatches
        always raise. Values may be jitorch tensors, numpy arrays or other array-likes.
        """
        missing, unexpected, errors = [], [], []
        expected = set()
        with no_grad():
            for prefix, mod in self.named_modules():
                head = prefix + "." if prefix else ""
                for name, target in mod._local_state().items():
                    key = head + name
                    expected.add(key)
                    if key not in state_dict:
                        missing.append(key)
                        continue
                    value = _as_tensor_value(state_dict[key], key)
                    if tuple(value.shape) != tuple(target.shape):
                        errors.append(
                            f"size mismatch for {key}: copying a param with shape jitorch.Size("
                            f"{list(value.shape)}) from checkpoint, the shape in current model is "
                            "jitorch.Size("
                            f"{list(target.shape)})."
                        )
                        continue
                    target.copy_(value)
        unexpected = [k for k in state_dict if k not in expected]
        if strict:
            if unexpected:
                errors.insert(
                    0, "Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in unexpected) + ". "
                )
            if missing:
                errors.insert(
                    0, "Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing) + ". "
                )
        if errors:
            raise RuntimeError(
                f"Error(s) in loading state_dict for {type(self).__name__}:\n\t" + "\n\t".join(errors)
            )
        return IncompatibleKeys(missing, unexpected)

    # --- modes, conversion ----------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Set training mode on this module and every descendant (dropout, batch norm)."""
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        note_module_change()
        for m in self.modules():
            m.__dict__["training"] = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset every parameter's `.grad` (to None by default, else to zeros in place)."""
        for p in self.parameters():
            if set_to_none:
                p.grad = None  # a write without a read: a compiled step needs no guard on the old grad
            elif p.grad is not None:
                p.grad = p.grad.detach()
                p.grad.zero_()

    def apply(self, fn: Callable[[Module], None]) -> Module:
        """Call `fn` on every submodule (children first) and then on self; e.g. custom init."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def _apply_to_tensors(self, convert: Callable[[Tensor], Tensor]) -> Module:
        """Convert every parameter and buffer in place (the same Parameter objects stay registered)."""
        with no_grad():
            for m in self.modules():
                for table in (m._parameters, m._buffers):
                    for t in table.values():
                        if t is None:
                            continue
                        new = convert(t.detach())
                        t._data, t._device = new._data, new._device
                        if t.grad is not None:
                            g = convert(t.grad)
                            t.grad = g if g is not t.grad else t.grad
        return self

    def to(self, *args, **kwargs) -> Module:
        """Move and/or cast parameters and buffers: `m.to(jitorch.float64)`, `m.to("cpu")`.

        A dtype applies only to floating point tensors, as in PyTorch.
        """

        def convert(t: Tensor) -> Tensor:
            out = t.to(*args, **kwargs)
            if not t.dtype.is_floating_point and out.dtype != t.dtype:
                out = out.to(t.dtype)  # integer buffers (num_batches_tracked) keep their dtype
            return out

        return self._apply_to_tensors(convert)

    def float(self) -> Module:
        from ... import float32

        return self.to(float32)

    def double(self) -> Module:
        from ... import float64

        return self.to(float64)

    def half(self) -> Module:
        from ... import float16

        return self.to(float16)

    def bfloat16(self) -> Module:
        from ... import bfloat16

        return self.to(bfloat16)

    def cpu(self) -> Module:
        return self.to("cpu")

    def cuda(self, device=None) -> Module:
        return self.to("cuda" if device is None else f"cuda:{device}" if isinstance(device, int) else device)

    # --- repr -----------------------------------------------------------------------------
    def extra_repr(self) -> str:
        """The text inside this module's parentheses in its repr (e.g. `in_features=2, ...`)."""
        return ""

    def _get_name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        child_lines = [f"({name}): " + _addindent(repr(m), 2) for name, m in self._modules.items()]
        lines = extra_lines + child_lines
        body = ""
        if len(extra_lines) == 1 and not child_lines:
            body = extra_lines[0]
        elif lines:
            body = "\n  " + "\n  ".join(lines) + "\n"
        return f"{self._get_name()}({body})"


class OptimizedModule(Module):
    """What `jitorch.compile(model)` returns, as PyTorch's class of that name: a Module holding the
    original as `_orig_mod` (its parameters and buffers, shared, so an optimizer made on either
    updates both; `state_dict()` keys prefixed `_orig_mod.`, as PyTorch's, so checkpoints move
    between a compiled model and a plain one with the prefix added or stripped), whose calls run
    the compiled forward. Other attributes read through to the original."""

    def __init__(self, mod: Module, compiled: Callable) -> None:
        super().__init__()
        self._orig_mod = mod
        self.__dict__["_compiled"] = compiled

    def forward(self, *args, **kwargs):
        return self._compiled(*args, **kwargs)

    def explain(self, *args, **kwargs) -> str:
        """The IR, the guards and the cache state of the compiled forward (`CompiledFunction.explain`)."""
        return self._compiled.explain(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_modules"]["_orig_mod"], name)

    def __repr__(self) -> str:
        return f"OptimizedModule(\n  (_orig_mod): {self._orig_mod!r}\n)"

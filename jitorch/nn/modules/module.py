"""`Module`: the base class of every layer; it owns parameters, buffers and submodules by name."""

from __future__ import annotations

import itertools
import warnings
from collections import OrderedDict, namedtuple
from collections.abc import Callable, Iterator, Mapping

import numpy as np

from ..._trace_state import note_module_change, trace_state
from ...autograd import is_grad_enabled, no_grad
from ...creation import empty_like, zeros_like
from ...ops import cat
from ...tensor import Tensor
from ..parameter import Buffer, Parameter

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])
_EXTRA_STATE_KEY = "_extra_state"  # PyTorch's key suffix for `get_extra_state()`'s value
_HOOK_TABLES = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
    "_state_dict_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)


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


def _pre_hook_pair(result) -> tuple[tuple, dict]:
    """A with_kwargs forward pre-hook's replacement, checked: PyTorch requires an (args, kwargs) pair."""
    if not (isinstance(result, tuple) and len(result) == 2):
        raise RuntimeError(
            "forward pre-hook must return None or a tuple of (new_args, new_kwargs), but got "
            f"{type(result).__name__}."
        )
    args, kwargs = result
    return (args if isinstance(args, tuple) else (args,)), kwargs


class _BackwardHookCall:
    """One call of a module with full backward hooks, as PyTorch's `BackwardHook`: the inputs that
    require grad pass through one identity node (flattened and concatenated, then split back), so
    that a single gradient hook sees every grad_input at once; the output passes through an identity
    view whose gradient hook runs the backward pre-hooks and notes grad_output. grad_input has one
    entry per positional argument, as in PyTorch: None for non-tensors, zeros for tensors that need
    no grad; what the hooks return for the others flows on to them."""

    def __init__(self, module: Module, args: tuple) -> None:
        if trace_state.tracer is not None:
            raise NotImplementedError(
                f"{type(module).__name__} has a full backward hook (or backward pre-hook), which "
                "jitorch.compile can't trace: compile the model without the hook, or run it eagerly."
            )
        self.module = module
        self.args = args
        self.grad_enabled = is_grad_enabled()
        self.tensor_slots = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
        self.grad_slots = [i for i in self.tensor_slots if args[i].requires_grad]
        self.grad_output: tuple | None = None

    def wrap_inputs(self) -> tuple:
        if not (self.grad_slots and self.grad_enabled):
            return self.args
        tensors = [self.args[i] for i in self.grad_slots]
        if len({t.dtype for t in tensors}) > 1:
            raise NotImplementedError(
                f"{type(self.module).__name__}'s full backward hook: jitorch needs the tensor inputs to share "
                f"a dtype; they are {[t.dtype.name for t in tensors]}. Cast them, or register hooks on the "
                "input tensors instead (tensor.register_hook)."
            )
        flat = cat([t.reshape(-1) for t in tensors])
        packed = flat.view_as(flat)  # a node of our own even where `cat` returned its one input
        packed.grad_fn.register_hook(self._on_grad_input)
        args, start = list(self.args), 0
        for i, t in zip(self.grad_slots, tensors):
            args[i] = packed[start:start + t.numel()].reshape(t.shape)
            start += t.numel()
        return tuple(args)

    def wrap_output(self, out):
        if not isinstance(out, Tensor):
            raise NotImplementedError(
                f"{type(self.module).__name__}'s full backward hook: jitorch supports a forward that "
                f"returns one tensor; it returned {type(out).__name__}. Register a hook on the output "
                "tensors instead (tensor.register_hook)."
            )
        if not (out.requires_grad and self.grad_enabled):
            return out
        view = out.view_as(out)
        view.grad_fn.register_hook(self._on_grad_output)
        return view

    def _on_grad_output(self, grad: Tensor) -> Tensor:
        grad_output = (grad,)
        for hook in list(self.module._backward_pre_hooks.values()):
            result = hook(self.module, grad_output)
            if result is not None:
                grad_output = _checked_grads(result, grad_output, "Backward pre hook", "grad_output")
        self.grad_output = grad_output
        if not self.grad_slots:
            self._run_hooks_without_grad_input()
        return grad_output[0]

    def _run_hooks_without_grad_input(self) -> None:
        """No input needs grad: PyTorch calls the hooks at the output, grad_input all None."""
        warnings.warn(
            "Full backward hook is firing when gradients are computed with respect to module outputs "
            "since no inputs require gradients.",
            stacklevel=2,
        )
        grad_input = (None,) * len(self.args)
        for hook in list(self.module._backward_hooks.values()):
            result = hook(self.module, grad_input, self.grad_output)
            if result is not None and not (isinstance(result, tuple) and all(g is None for g in result)):
                raise RuntimeError(
                    "Backward hook for Modules where no input requires gradient should always return "
                    "None or None for all gradients."
                )

    def _on_grad_input(self, packed_grad: Tensor) -> Tensor:
        grad_input = [zeros_like(self.args[i]) if i in self.tensor_slots else None for i in range(len(self.args))]
        start = 0
        for i in self.grad_slots:
            t = self.args[i]
            grad_input[i] = packed_grad[start:start + t.numel()].reshape(t.shape)
            start += t.numel()
        grad_input = tuple(grad_input)
        for hook in list(self.module._backward_hooks.values()):
            result = hook(self.module, grad_input, self.grad_output)
            if result is not None:
                grad_input = _checked_grads(result, grad_input, "Backward hook", "grad_input")
        return cat([_grad_or_zeros(grad_input[i], self.args[i]).reshape(-1) for i in self.grad_slots])


def _grad_or_zeros(grad: Tensor | None, like: Tensor) -> Tensor:
    return zeros_like(like) if grad is None else grad


def _checked_grads(result, expected: tuple, hook_kind: str, what: str) -> tuple:
    """A backward (pre-)hook's replacement gradients, checked as PyTorch checks them."""
    result = result if isinstance(result, tuple) else (result,)
    if len(result) != len(expected):
        raise RuntimeError(
            f"{hook_kind} returned an invalid number of {what}, got {len(result)}, but expected "
            f"{len(expected)}: return a tuple with one entry per entry of {what}"
        )
    for new, old in zip(result, expected):
        if new is not None and old is not None and tuple(new.shape) != tuple(old.shape):
            raise RuntimeError(
                f"{hook_kind} returned a {what} entry of shape {tuple(new.shape)}; expected {tuple(old.shape)}"
            )
    return result


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
        for table in _HOOK_TABLES:
            d[table] = _Registry()
        d["_hooks_with_kwargs"] = set()  # ids of forward (pre-)hooks registered with_kwargs=True
        d["_hooks_returning_none"] = set()  # ids of public state_dict post-hooks

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
        """A call as written: the forward pre-hooks, forward, the forward hooks; with backward hooks,
        the inputs and output pass through identity views whose gradient hooks call them."""
        if trace_state.tracer is not None:
            trace_state.tracer.note_module(self)  # jitorch.compile guards on what the forward reads
        if not self._forward_pre_hooks and not self._forward_hooks and not self._has_backward_hooks():
            return self.forward(*args, **kwargs)
        for hook_id, hook in list(self._forward_pre_hooks.items()):
            if hook_id in self._hooks_with_kwargs:
                result = hook(self, args, kwargs)
                if result is not None:
                    args, kwargs = _pre_hook_pair(result)
            else:
                result = hook(self, args)
                if result is not None:
                    args = result if isinstance(result, tuple) else (result,)
        backward = _BackwardHookCall(self, args) if self._has_backward_hooks() else None
        if backward is not None:
            args = backward.wrap_inputs()
        out = self.forward(*args, **kwargs)
        for hook_id, hook in list(self._forward_hooks.items()):
            with_kwargs = hook_id in self._hooks_with_kwargs
            result = hook(self, args, kwargs, out) if with_kwargs else hook(self, args, out)
            if result is not None:
                out = result
        return out if backward is None else backward.wrap_output(out)

    def _has_backward_hooks(self) -> bool:
        return bool(self._backward_hooks or self._backward_pre_hooks)

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

    def _add_hook(
        self, table: str, hook: Callable, prepend: bool = False, with_kwargs: bool = False
    ) -> RemovableHandle:
        """Register `hook` in the registry `table` (first with `prepend`); its handle removes it."""
        hooks = self.__dict__[table]
        handle = RemovableHandle(hooks)
        later = list(hooks.items()) if prepend else []
        for hook_id, _ in later:
            del hooks[hook_id]
        hooks[handle.id] = hook
        hooks.update(later)
        if with_kwargs:
            self._hooks_with_kwargs.add(handle.id)
        return handle

    def register_forward_pre_hook(
        self, hook: Callable, *, prepend: bool = False, with_kwargs: bool = False
    ) -> RemovableHandle:
        """`hook(module, args)` runs before forward; it may return replacement args. With
        `with_kwargs=True` it is `hook(module, args, kwargs)` and may return an `(args, kwargs)` pair."""
        return self._add_hook("_forward_pre_hooks", hook, prepend, with_kwargs)

    def register_forward_hook(
        self, hook: Callable, *, prepend: bool = False, with_kwargs: bool = False
    ) -> RemovableHandle:
        """`hook(module, args, output)` runs after forward; it may return a replacement output.
        With `with_kwargs=True` it is `hook(module, args, kwargs, output)`."""
        return self._add_hook("_forward_hooks", hook, prepend, with_kwargs)

    def register_full_backward_pre_hook(self, hook: Callable, prepend: bool = False) -> RemovableHandle:
        """`hook(module, grad_output)` runs when the gradient of the module's output is known,
        before the gradients of its inputs are computed; it may return a replacement grad_output tuple."""
        return self._add_hook("_backward_pre_hooks", hook, prepend)

    def register_full_backward_hook(self, hook: Callable, prepend: bool = False) -> RemovableHandle:
        """`hook(module, grad_input, grad_output)` runs when the gradients of the module's tensor
        inputs are known; it may return a replacement grad_input tuple, which flows on to the leaves.

        Works eagerly for modules whose forward returns one tensor and whose inputs that need grad
        share a dtype (under `jitorch.compile` the call raises: compile the model without the hook)."""
        return self._add_hook("_backward_hooks", hook, prepend)

    def register_state_dict_pre_hook(self, hook: Callable) -> RemovableHandle:
        """`hook(module, prefix, keep_vars)` runs before `state_dict()` collects this module."""
        return self._add_hook("_state_dict_pre_hooks", hook)

    def register_state_dict_post_hook(self, hook: Callable) -> RemovableHandle:
        """`hook(module, state_dict, prefix, local_metadata)` runs after `state_dict()` collected this
        module and its children; it edits `state_dict` in place and must return None."""
        handle = self._add_hook("_state_dict_hooks", hook)
        self._hooks_returning_none.add(handle.id)
        return handle

    def _register_state_dict_hook(self, hook: Callable) -> RemovableHandle:
        """As `register_state_dict_post_hook`, but the hook may return a replacement state dict
        (PyTorch's private form, which libraries still use)."""
        return self._add_hook("_state_dict_hooks", hook)

    def register_load_state_dict_pre_hook(self, hook: Callable) -> RemovableHandle:
        """`hook(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
        error_msgs)` runs before this module's entries load; it may edit `state_dict` (e.g. rename keys)."""
        return self._add_hook("_load_state_dict_pre_hooks", hook)

    def register_load_state_dict_post_hook(self, hook: Callable) -> RemovableHandle:
        """`hook(module, incompatible_keys)` runs after this module and its children loaded; it may
        edit `incompatible_keys.missing_keys`/`.unexpected_keys` in place (before `strict` checks them)."""
        return self._add_hook("_load_state_dict_post_hooks", hook)

    # --- attributes -----------------------------------------------------------------------
    def __setattr__(self, name: str, value) -> None:
        note_module_change()  # a compiled program may have baked the old value in
        d = self.__dict__
        params, modules, buffers = d.get("_parameters"), d.get("_modules"), d.get("_buffers")
        if isinstance(value, (Parameter, Module, Buffer)) and params is None:
            raise AttributeError("cannot assign parameters, buffers or modules before Module.__init__() call")
        if isinstance(value, Parameter):
            self._remove_plain(name, keep="_parameters")
            self.register_parameter(name, value)
        elif params is not None and name in params:
            if value is not None:
                raise TypeError(
                    f"cannot assign '{type(value).__name__}' as parameter '{name}' "
                    "(jitorch.nn.Parameter or None expected)"
                )
            params[name] = None
        elif isinstance(value, Module):
            self._remove_plain(name, keep="_modules")
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

    def _remove_plain(self, name: str, keep: str | None = None) -> None:
        """Forget `name` everywhere but in registry `keep`, where it is about to be assigned again: as in
        PyTorch, a child (or parameter) assigned anew keeps its place in the order of its registry."""
        self.__dict__.pop(name, None)
        for table in ("_parameters", "_buffers", "_modules"):
            if table != keep:
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
        """The submodule at dotted path `target` (`""` is self), e.g. `model.get_submodule("encoder.0")`."""
        mod = self
        for part in target.split(".") if target else ():
            if not hasattr(mod, part):
                raise AttributeError(f"{mod._get_name()} has no attribute `{part}`")
            mod = getattr(mod, part)
            if not isinstance(mod, Module):
                raise AttributeError(f"`{part}` is not an nn.Module")
        return mod

    def get_parameter(self, target: str) -> Parameter:
        """The parameter at dotted path `target`, e.g. `model.get_parameter("fc.weight")`."""
        mod, name = self._owner_of(target)
        value = getattr(mod, name)
        if not isinstance(value, Parameter):
            raise AttributeError(f"`{name}` is not an nn.Parameter")
        return value

    def get_buffer(self, target: str) -> Tensor:
        """The buffer at dotted path `target`, e.g. `model.get_buffer("bn.running_mean")`."""
        mod, name = self._owner_of(target)
        if name not in mod._buffers:
            raise AttributeError(f"`{name}` is not a buffer")
        return mod._buffers[name]

    def _owner_of(self, target: str) -> tuple[Module, str]:
        """The module holding the attribute at dotted path `target`, and its name there (PyTorch's
        error if there is no such attribute)."""
        module_path, _, name = target.rpartition(".")
        mod = self.get_submodule(module_path)
        if not hasattr(mod, name):
            raise AttributeError(f"{mod._get_name()} has no attribute `{name}`")
        return mod, name

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
        """Parameters and persistent buffers by dotted name (detached tensors sharing storage), plus
        `get_extra_state()` under `<prefix>_extra_state` where a module defines it; the state-dict
        hooks run as in PyTorch, and `._metadata` holds each module's version."""
        if destination is None:
            destination = OrderedDict()
            destination._metadata = OrderedDict()
        local_metadata = {"version": self._version}
        if hasattr(destination, "_metadata"):
            destination._metadata[prefix[:-1]] = local_metadata
        for hook in list(self._state_dict_pre_hooks.values()):
            hook(self, prefix, keep_vars)
        for name, value in self._local_state().items():
            destination[prefix + name] = value if keep_vars else value.detach()
        if type(self).get_extra_state is not Module.get_extra_state:
            destination[prefix + _EXTRA_STATE_KEY] = self.get_extra_state()
        for name, m in self._modules.items():
            if m is not None:
                m.state_dict(destination, prefix + name + ".", keep_vars)
        for hook_id, hook in list(self._state_dict_hooks.items()):
            result = hook(self, destination, prefix, local_metadata)
            if result is not None and hook_id in self._hooks_returning_none:
                raise RuntimeError("state_dict post-hook must return None: modify the state_dict in place")
            if result is not None:
                destination = result
        return destination

    def get_extra_state(self):
        """Override (with `set_extra_state`) to keep non-tensor state in `state_dict()`, under the
        key `_extra_state`."""
        raise RuntimeError(
            "Reached a code path in Module.get_extra_state() that should never be called: "
            "override get_extra_state() and set_extra_state() together."
        )

    def set_extra_state(self, state) -> None:
        """Override (with `get_extra_state`) to restore what `get_extra_state` returned."""
        raise RuntimeError(
            "Reached a code path in Module.set_extra_state() that should never be called: "
            "override get_extra_state() and set_extra_state() together."
        )

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
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"Expected state_dict to be dict-like, got {type(state_dict).__name__}.")
        keys, errors = IncompatibleKeys([], []), []
        metadata = getattr(state_dict, "_metadata", None)
        with no_grad():
            self._load_tree(OrderedDict(state_dict), "", metadata, keys, errors)
        missing, unexpected = keys
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

    def _load_tree(self, state: dict, prefix: str, metadata: dict | None, keys: IncompatibleKeys,
                   errors: list[str]) -> None:
        """Load this module's entries of `state` (keys under `prefix`), then its children's, running
        the load hooks in PyTorch's order (pre-hooks before a module, post-hooks after its subtree)."""
        local_metadata = {} if metadata is None else metadata.get(prefix[:-1], {})
        for hook in list(self._load_state_dict_pre_hooks.values()):
            hook(self, state, prefix, local_metadata, True, keys.missing_keys, keys.unexpected_keys, errors)
        self._load_local(state, prefix, keys, errors)
        for name, child in self._modules.items():
            if child is not None:
                head = prefix + name + "."
                child._load_tree({k: v for k, v in state.items() if k.startswith(head)}, head, metadata, keys, errors)
        for hook in list(self._load_state_dict_post_hooks.values()):
            if hook(self, keys) is not None:
                raise RuntimeError(
                    "load_state_dict post-hook must return None: modify incompatible_keys in place"
                )

    def _load_local(self, state: dict, prefix: str, keys: IncompatibleKeys, errors: list[str]) -> None:
        """Copy this module's own parameters, buffers and extra state from `state`; note what is
        missing, unexpected (neither a local entry nor under a child) or of the wrong shape."""
        local = self._local_state()
        for name, target in local.items():
            key = prefix + name
            if key not in state:
                keys.missing_keys.append(key)
                continue
            value = _as_tensor_value(state[key], key)
            if tuple(value.shape) != tuple(target.shape):
                errors.append(
                    f"size mismatch for {key}: copying a param with shape jitorch.Size({list(value.shape)}) "
                    f"from checkpoint, the shape in current model is jitorch.Size({list(target.shape)})."
                )
                continue
            target.copy_(value)
        extra_key = prefix + _EXTRA_STATE_KEY
        if type(self).set_extra_state is not Module.set_extra_state:
            if extra_key in state:
                self.set_extra_state(state[extra_key])
            else:
                keys.missing_keys.append(extra_key)
        for key in state:
            head = key[len(prefix):].split(".", 1)[0]
            if key.startswith(prefix) and key != extra_key and head not in self._modules and head not in local:
                keys.unexpected_keys.append(key)

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

    def _apply_to_tensors(self, convert: Callable[[Tensor], Tensor], recurse: bool = True) -> Module:
        """Convert every parameter and buffer in place (the same Parameter objects stay registered);
        with `recurse=False`, only this module's own."""
        with no_grad():
            for m in self.modules() if recurse else (self,):
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

    def type(self, dst_type) -> Module:
        """Cast every parameter and buffer, integer ones included (unlike `.to(dtype)`), to `dst_type`
        (a dtype or a name such as "jitorch.DoubleTensor")."""
        return self._apply_to_tensors(lambda t: t.type(dst_type))

    def to_empty(self, *, device, recurse: bool = True) -> Module:
        """Move parameters and buffers to `device` without copying their values (uninitialized
        storage), as after building a model on the "meta" device; initialize them next."""
        return self._apply_to_tensors(lambda t: empty_like(t, device=device), recurse)

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

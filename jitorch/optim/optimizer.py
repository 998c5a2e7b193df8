"""The `Optimizer` base class and `ParamGroup`, the dict that keeps hyperparameters readable as data.

Users and schedulers read and write a group's hyperparameters as Python floats, exactly as in
PyTorch (`group["lr"] = 0.01`). The update math never reads those floats: it reads 0-d float64
tensors that the group keeps in sync (`group.hyper("lr")`). A compiled training step therefore sees
the learning rate as an input tensor, not a constant baked into the trace, so a scheduler changing
it every step never forces a recompile.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .. import dtypes as _dt
from .._trace_state import trace_state
from ..autograd import enable_grad, no_grad
from ..backends import backend_for
from ..creation import tensor as _tensor
from ..creation import zeros, zeros_like
from ..dispatch import fuses_composites
from ..ops import where
from ..tensor import Tensor

Hyper = Tensor | tuple[Tensor, ...]


def _is_number(value: Any) -> bool:
    """A real hyperparameter value: a float or int (not a bool, which is a switch) or a 1-element tensor."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, numbers.Real):  # also numpy scalars, which schedulers may compute
        return True
    return isinstance(value, Tensor) and value.numel() == 1 and value.dtype.is_floating_point


def _is_number_tuple(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and len(value) > 0 and all(_is_number(v) for v in value)


def _scalar_tensor(value) -> Tensor:
    return _tensor(float(value), dtype=_dt.float64)


class ParamGroup(dict):
    """One entry of `optimizer.param_groups`: a dict that mirrors numeric values into 0-d tensors.

    Every numeric value (`lr`, `eps`, `weight_decay`, ...) and every tuple of numbers (`betas`) has
    a persistent float64 tensor twin; assigning the key writes the new value into that same tensor
    in place, so anything holding the tensor (a compiled step) sees the change.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()
        self._hyper: dict[str, Hyper] = {}
        self._per_step: dict[tuple[str, _dt.DType], Tensor] = {}
        self.update(*args, **kwargs)

    def __setitem__(self, key: str, value: Any) -> None:
        if trace_state.tracer is not None:
            from .._trace_state import user_source
            from ..errors import TraceError

            # a trace would keep this write's value as a constant, replayed unchanged every call
            raise TraceError(
                f"param group {key!r} set inside jitorch.compile ({user_source()}): a compiled function "
                "replays its trace, so this Python write would happen once, not every call. Set it "
                "outside the compiled function (call lr_scheduler.step() after the compiled step); the "
                "step reads the new value as data.")
        super().__setitem__(key, value)
        self._sync(key, value)

    # Reading a value while jitorch.compile traces makes the program depend on it: it is guarded
    # (a change means a new trace), except what the update reads as data through `hyper`.
    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key)
        if trace_state.tracer is not None:
            self._guard(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def nonzero(self, key: str) -> bool:
        """Whether hyperparameter `key` is not 0: an optimizer's switch (weight decay or momentum
        on). A compiled step depends on the answer, not the number: changing a nonzero value is
        data for it, turning it on or off a new trace."""
        value = super().__getitem__(key)
        tracer = trace_state.tracer
        if tracer is not None:
            tracer.note_python_value((id(self), key, "nonzero"), f"param group {key} != 0",
                                     lambda: dict.__getitem__(self, key) != 0)
        return value != 0

    def _guard(self, key: str) -> None:
        tracer = trace_state.tracer
        if key == "params":  # which tensors the step updates
            tracer.note_python_value((id(self), key), "param group params",
                                     lambda: tuple(map(id, dict.__getitem__(self, key))), _count("tensors"))
        else:
            tracer.note_python_value((id(self), key), f"param group {key}", lambda: dict.__getitem__(self, key))

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._hyper.pop(key, None)

    def update(self, *args, **kwargs) -> None:  # dict.update would bypass __setitem__
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def pop(self, key: str, *default):
        self._hyper.pop(key, None)
        return super().pop(key, *default)

    def hyper(self, key: str) -> Hyper:
        """The 0-d float64 tensor (or tuple of them, for `betas`) holding hyperparameter `key`."""
        try:
            return self._hyper[key]
        except KeyError:
            raise KeyError(
                f"param group has no numeric hyperparameter {key!r} (its value is "
                f"{self.get(key, '<missing>')!r})"
            ) from None

    def per_step(self, name: str, dtype: _dt.DType, compute: Callable[[], Tensor]) -> Tensor:
        """A constant derived from the hyperparameters (`1 - beta1`, ...) in `dtype`, computed once
        per `optimizer.step()` for all the group's parameters rather than once for each: a step's
        hyperparameters don't change, and every 0-d op costs a whole dispatch."""
        key = (name, dtype)
        value = self._per_step.get(key)
        if value is None:
            value = self._per_step[key] = compute().to(dtype)
        return value

    def _sync(self, key: str, value: Any) -> None:
        """Write `value` into the key's tensor twin, in place when the twin already exists."""
        if _is_number(value):
            twin = self._hyper.get(key)
            if isinstance(twin, Tensor):
                _fill_scalar(twin, value)
            else:
                self._hyper[key] = _scalar_tensor(value)
        elif _is_number_tuple(value):
            twin = self._hyper.get(key)
            if isinstance(twin, tuple) and len(twin) == len(value):
                for t, v in zip(twin, value):
                    _fill_scalar(t, v)
            else:
                self._hyper[key] = tuple(_scalar_tensor(v) for v in value)
        else:
            self._hyper.pop(key, None)

    def __copy__(self) -> ParamGroup:
        return ParamGroup(self)

    def __deepcopy__(self, memo) -> ParamGroup:
        return ParamGroup({k: copy.deepcopy(v, memo) for k, v in self.items()})

    def __reduce__(self):
        return (ParamGroup, (dict(self),))


def _count(what: str) -> Callable[[tuple], str]:
    return lambda ids: f"{len(ids)} {what}"


def _fill_scalar(twin: Tensor, value) -> None:
    with no_grad():
        twin.fill_(float(value))


class Optimizer:
    """Base class of all optimizers: parameter groups, per-parameter state, and state dicts.

    A subclass passes its `defaults` (hyperparameters) and implements `step`, reading values with
    `group.hyper(name)` and updating parameters and state tensors in place under `no_grad`.
    """

    def __init__(self, params: Iterable, defaults: dict[str, Any]) -> None:
        self.defaults = dict(defaults)
        self._fused_update = None
        self.state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)
        self.param_groups: list[ParamGroup] = []
        if isinstance(params, Tensor):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of Tensors or dicts, "
                f"but got a Tensor of shape {tuple(params.shape)}; wrap it in a list"
            )
        groups = list(params)
        if len(groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {group[k]}" for k in sorted(group) if k != "params"]
        return "\n".join(lines) + "\n)"

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters with its own hyperparameters (missing ones take the defaults)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            _check_param(p)
        seen = {id(p) for group in self.param_groups for p in group["params"]}
        if len({id(p) for p in params}) != len(params):
            raise ValueError("optimizer parameter group contains the same parameter more than once")
        if any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        group = ParamGroup({k: v for k, v in param_group.items() if k != "params"})
        group["params"] = params
        for name, default in self.defaults.items():
            group.setdefault(name, default)
        self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset every parameter's gradient: to None (the default, frees memory) or to zeros."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None  # a write without a read: a compiled step needs no guard on the old grad
                elif p.grad is not None:
                    if p.grad.grad_fn is not None:
                        p.grad = p.grad.detach()
                    with no_grad():
                        p.grad.zero_()

    @no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        """Update the parameters once from their `.grad`; `closure` re-evaluates the loss first.
        The update of every parameter runs as one `jitorch.compile`d program with `fused=True`,
        and by default on a device whose backend fuses eager composites (the GPU: see
        `_compiles_update`); otherwise parameter by parameter."""
        loss = self._evaluate_closure(closure)
        self._run_update(None)
        return loss

    @no_grad()
    def _step_unless(self, skip: Tensor) -> None:
        """`step()`, except that where `skip` (a 0-d tensor on the parameters' device, nonzero: an
        inf or NaN among the gradients, `jitorch.amp.GradScaler`) the parameters and their state
        keep their values: decided on the device, without reading `skip` on the host."""
        self._run_update(skip)

    def _run_update(self, skip: Tensor | None) -> None:
        if trace_state.tracer is None and self._compiles_update():
            if self._fused_update is None:
                from ..compiler import compile

                self._fused_update = compile(self._update_all, name=f"{type(self).__name__}.step (fused)")
            self._fused_update(skip)
        else:
            self._update_all(skip)

    def _compiles_update(self) -> bool:
        """Whether `step` runs the compiled update, as PyTorch picks its implementation: `fused=True`
        always; `fused=False` or `foreach=False` never (the per-parameter loop); otherwise (both None,
        PyTorch's default, or `foreach=True`) when the parameters share a device whose backend fuses
        eager composites. That is where PyTorch's default is its multi-tensor "foreach" update (CUDA)
        and where one op per parameter costs a kernel launch each; on the CPU PyTorch's default is
        the for-loop, and so is jitorch's. The learning rate and the other hyperparameters reach the
        compiled update as data (`ParamGroup.hyper`), so a scheduler does not retrace it."""
        fused = self.defaults.get("fused")
        if fused is not None:
            return bool(fused)
        if self.defaults.get("foreach") is False:
            return False
        params = [p for group in self.param_groups for p in group["params"]]
        return bool(params) and fuses_composites(*params)

    def _step_count(self, p: Tensor) -> Tensor:
        """A parameter's step count: a 0-d tensor, as in PyTorch, so that a compiled step counts in
        data. On the CPU, as PyTorch's for-loop and foreach updates keep it, except where the update
        is compiled (by `_compiles_update`, or with the whole training step by `jitorch.compile`): then
        on the parameter's device, as PyTorch's fused update keeps it, so that the compiled update
        never waits for the GPU to copy counts back to the host."""
        fused, foreach = self.defaults.get("fused"), self.defaults.get("foreach")
        # (not `_compiles_update`: inside a traced training step there is no eager update to choose)
        compiled = fused if fused is not None else (
            foreach is not False and backend_for(p.device.type).fuses_eager_composites)
        return zeros((), device=p.device if compiled else None)

    def _update_all(self, skip: Tensor | None = None) -> None:
        if trace_state.tracer is not None:  # a compiled step updates the groups it saw
            trace_state.tracer.note_python_value((id(self), "param_groups"), f"{type(self).__name__}.param_groups",
                                                 lambda: tuple(map(id, self.param_groups)), _count("groups"))
        for group in self.param_groups:
            group._per_step.clear()  # the hyperparameters may have changed since the last step
            for p in self._params_with_grad(group):
                if skip is None:
                    self._update(p, group)
                else:
                    self._update_unless(skip, p, group)
            group._per_step.clear()  # (and a traced step's values must not outlive its trace)

    def _update_unless(self, skip: Tensor, p: Tensor, group: ParamGroup) -> None:
        """`_update`, then each value it wrote back to its old one where `skip` (a state made by this
        update back to zeros, as if it had never run). Compiled, the old values are the kernel's
        inputs and the choice one select in it: no copies."""
        before = {"": p.clone(), **{k: v.clone() for k, v in self.state[p].items() if isinstance(v, Tensor)}}
        self._update(p, group)
        keep = skip != 0
        for name, t in [("", p), *((k, v) for k, v in self.state[p].items() if isinstance(v, Tensor))]:
            old = before.get(name)
            t.copy_(where(keep, old if old is not None else zeros_like(t), t))

    def _update(self, p: Tensor, group: ParamGroup) -> None:
        """One parameter's update (each optimizer defines its own)."""
        raise NotImplementedError

    def _evaluate_closure(self, closure: Callable[[], Any] | None):
        if closure is None:
            return None
        with enable_grad():
            return closure()

    def _params_with_grad(self, group: ParamGroup) -> list[Tensor]:
        return [p for p in group["params"] if p.grad is not None]

    # --- state dicts ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """PyTorch's layout: `{"state": {param_index: {...}}, "param_groups": [{..., "params": [i]}]}`.

        Parameters are named by their position across all groups, so the dict loads into a fresh
        optimizer over a fresh model. State tensors are the live ones (not copies), as in PyTorch.
        """
        index_of: dict[int, int] = {}
        packed_groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                index_of.setdefault(id(p), len(index_of))
            packed["params"] = [index_of[id(p)] for p in group["params"]]
            packed_groups.append(packed)
        packed_state = {index_of[id(p)]: dict(s) for p, s in self.state.items() if id(p) in index_of}
        return {"state": packed_state, "param_groups": packed_groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore hyperparameters and state saved by `state_dict`.

        Groups are updated in place and state tensors are copied into the existing ones where the
        shapes agree, so tensors that a compiled step already holds stay the live ones.
        """
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"loaded state dict has {len(saved_groups)} parameter groups, but this optimizer has "
                f"{len(self.param_groups)}"
            )
        for i, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"loaded state dict contains a parameter group ({i}) with {len(saved['params'])} "
                    f"parameters, but this optimizer's group has {len(group['params'])}"
                )
        param_of = {}
        for group, saved in zip(self.param_groups, saved_groups):
            param_of.update({int(i): p for i, p in zip(saved["params"], group["params"])})
            for key in [k for k in group if k != "params" and k not in saved]:
                del group[key]
            group.update({k: copy.deepcopy(v) for k, v in saved.items() if k != "params"})
        new_state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)
        for index, saved_state in state_dict["state"].items():
            p = param_of.get(int(index))
            if p is None:
                continue  # PyTorch ignores state of parameters that no group names
            old = self.state.get(p, {})
            new_state[p] = {k: _restore_state_value(k, v, p, old.get(k)) for k, v in saved_state.items()}
        self.state = new_state


def _check_param(p) -> None:
    if not isinstance(p, Tensor):
        raise TypeError(f"optimizer can only optimize Tensors, but one of the params is {type(p).__name__}")
    if not p.is_leaf:
        raise ValueError("can't optimize a non-leaf Tensor (one computed from others); use a leaf, "
                         "e.g. x.detach().requires_grad_()")


def _restore_state_value(key: str, value: Any, param: Tensor, old: Any) -> Any:
    """A loaded state entry, placed like PyTorch: on the param's device, floats in the param's dtype;
    `step` kept as is (a CPU scalar)."""
    if not isinstance(value, Tensor):
        return copy.deepcopy(value)
    if key != "step":
        value = value.to(param.device, param.dtype if value.dtype.is_floating_point else None)
    if isinstance(old, Tensor) and old.shape == value.shape and old.dtype == value.dtype:
        with no_grad():
            return old.copy_(value)
    return value.detach().clone()


def implementation_flags(name: str, **flags: bool | None) -> dict[str, bool | None]:
    """PyTorch's implementation switches of one optimizer (`foreach`, `fused`, `capturable`,
    `differentiable`, as far as it has them), checked, for its defaults as PyTorch keeps them.
    `fused=True` runs the whole update as one `jitorch.compile`d program (fused kernels), as do the
    defaults (and `foreach=True`) on the GPU; `foreach=False` keeps the per-parameter loop (see
    `Optimizer._compiles_update`). Both compute the same numbers."""
    if flags.get("foreach") and flags.get("fused"):
        raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
    if flags.get("capturable"):
        raise NotImplementedError(f"{name}(capturable=True) is for CUDA graphs, which jitorch does not have")
    if flags.get("differentiable"):
        raise NotImplementedError(f"{name}(differentiable=True), differentiating through the optimizer step, "
                                  "is not supported")
    return flags


def check_nonnegative(name: str, value) -> None:
    """Raise PyTorch's ValueError for a negative (or NaN) hyperparameter."""
    if isinstance(value, Tensor):
        value = value.item()
    if not value >= 0.0 or math.isnan(value):
        raise ValueError(f"Invalid {name}: {value}")

"""L-BFGS: quasi-Newton steps from a short history of gradient differences, with an optional
strong-Wolfe line search. Eager only: every iteration decides in Python, on values read back from
the tensors, whether to continue, which a compiled trace could not replay."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

from .._trace_state import trace_state, user_source
from ..autograd import enable_grad, no_grad
from ..errors import TraceError
from ..ops import cat
from ..tensor import Tensor
from .optimizer import Optimizer, check_nonnegative

Objective = Callable[[list[Tensor], float, Tensor], tuple[float, Tensor]]


class LBFGS(Optimizer):
    """PyTorch's LBFGS: one param group; `step(closure)` runs up to `max_iter` iterations, each
    re-evaluating the loss through `closure` (which must zero the gradients, compute the loss, call
    `backward()` and return it). `line_search_fn` is None (a fixed step `lr`) or "strong_wolfe".

    Eager only: it reads the loss and gradient norms on the host every iteration, so calling it
    inside `jitorch.compile` is an error; compile the closure's model instead.

        opt = jitorch.optim.LBFGS(model.parameters(), lr=1, history_size=10, line_search_fn="strong_wolfe")
        def closure():
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            return loss
        opt.step(closure)
    """

    def __init__(self, params: Iterable, lr: float = 1, max_iter: int = 20, max_eval: int | None = None,
                 tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9, history_size: int = 100,
                 line_search_fn: str | None = None) -> None:
        check_nonnegative("learning rate", lr)
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        defaults = dict(lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
                        tolerance_change=tolerance_change, history_size=history_size,
                        line_search_fn=line_search_fn)
        super().__init__(params, defaults)
        self._params: list[Tensor] = self.param_groups[0]["params"]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Refused after the first: L-BFGS treats all parameters as one vector, with one set of options."""
        if self.param_groups:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        super().add_param_group(param_group)

    # --- the parameters as one flat vector --------------------------------------------------
    def _gather_flat_grad(self) -> Tensor:
        return cat([p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in self._params])

    def _add_grad(self, step_size: float, update: Tensor) -> None:
        offset = 0
        for p in self._params:
            numel = p.numel()
            p.add_(update[offset:offset + numel].view_as(p), alpha=step_size)
            offset += numel

    def _directional_evaluate(self, closure: Callable[[], Any], x: list[Tensor], t: float,
                              d: Tensor) -> tuple[float, Tensor]:
        """The loss and flat gradient at `x + t * d`; the parameters are put back to `x` after."""
        self._add_grad(t, d)
        loss = float(closure())
        flat_grad = self._gather_flat_grad()
        for p, saved in zip(self._params, x, strict=True):
            p.copy_(saved)
        return loss, flat_grad

    @no_grad()
    def step(self, closure: Callable[[], Any]) -> Any:
        """Run up to `max_iter` L-BFGS iterations; returns the loss of the first `closure()` call."""
        _refuse_tracing()
        closure = enable_grad()(closure)
        group = self.param_groups[0]
        lr, max_iter, max_eval = float(group["lr"]), group["max_iter"], group["max_eval"]
        tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
        line_search_fn, history_size = group["line_search_fn"], group["history_size"]
        if line_search_fn not in (None, "strong_wolfe"):
            raise RuntimeError(f"only 'strong_wolfe' is supported as LBFGS's line_search_fn, not {line_search_fn!r}")

        state = self.state[self._params[0]]  # PyTorch keeps all of LBFGS's state under the first parameter
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)

        orig_loss = closure()
        loss = float(orig_loss)
        current_evals = 1
        state["func_evals"] += 1
        flat_grad = self._gather_flat_grad()
        if float(flat_grad.abs().max()) <= tolerance_grad:
            return orig_loss

        d, t = state.get("d"), state.get("t")
        old_dirs, old_stps, ro = state.get("old_dirs"), state.get("old_stps"), state.get("ro")
        H_diag, prev_flat_grad, prev_loss = state.get("H_diag"), state.get("prev_flat_grad"), state.get("prev_loss")

        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1
            if state["n_iter"] == 1:
                d = -flat_grad
                old_dirs, old_stps, ro, H_diag = [], [], [], 1.0
            else:
                H_diag = _update_history(flat_grad - prev_flat_grad, d * t, old_dirs, old_stps, ro, history_size,
                                         H_diag)
                d = _two_loop_direction(flat_grad, old_dirs, old_stps, ro, H_diag,
                                        state.setdefault("al", [None] * history_size))
            if prev_flat_grad is None:
                prev_flat_grad = flat_grad.clone()
            else:
                prev_flat_grad.copy_(flat_grad)
            prev_loss = loss
            # the first step is scaled down to at most lr / |grad|_1: there is no curvature estimate yet
            t = min(1.0, 1.0 / float(flat_grad.abs().sum())) * lr if state["n_iter"] == 1 else lr
            gtd = float(flat_grad.dot(d))
            if gtd > -tolerance_change:  # not a descent direction
                break

            ls_func_evals = 0
            if line_search_fn is not None:
                x_init = [p.clone() for p in self._params]
                objective = functools.partial(self._directional_evaluate, closure)
                loss, flat_grad, t, ls_func_evals = _strong_wolfe(objective, x_init, t, d, loss, flat_grad, gtd,
                                                                  tolerance_change=tolerance_change,
                                                                  max_ls=max_eval - current_evals)
                self._add_grad(t, d)
                opt_cond = float(flat_grad.abs().max()) <= tolerance_grad
            else:
                self._add_grad(t, d)
                opt_cond = False
                if n_iter != max_iter:  # the last iteration's loss is the next step's first evaluation
                    loss = float(closure())
                    flat_grad = self._gather_flat_grad()
                    opt_cond = float(flat_grad.abs().max()) <= tolerance_grad
                    ls_func_evals = 1
            current_evals += ls_func_evals
            state["func_evals"] += ls_func_evals

            if (n_iter == max_iter or current_evals >= max_eval or opt_cond
                    or float((d * t).abs().max()) <= tolerance_change or abs(loss - prev_loss) < tolerance_change):
                break

        state.update(d=d, t=t, old_dirs=old_dirs, old_stps=old_stps, ro=ro, H_diag=H_diag,
                     prev_flat_grad=prev_flat_grad, prev_loss=prev_loss)
        return orig_loss


def _refuse_tracing() -> None:
    if trace_state.tracer is not None:
        raise TraceError(
            f"LBFGS.step called inside jitorch.compile ({user_source()}): L-BFGS decides in Python, from the loss "
            "and gradient values of every iteration, when to stop, which a trace cannot replay. Call "
            "opt.step(closure) outside the compiled function, and compile the model (or the closure's forward) "
            "instead.")


def _update_history(y: Tensor, s: Tensor, old_dirs: list[Tensor], old_stps: list[Tensor], ro: list,
                    history_size: int, H_diag: Any) -> Any:
    """Record the newest curvature pair (y: gradient change, s: step) when it is positive
    (`y.s > 1e-10`), dropping the oldest past `history_size`; returns the new Hessian diagonal scale."""
    ys = float(y.dot(s))
    if ys <= 1e-10:
        return H_diag
    if len(old_dirs) == history_size:
        old_dirs.pop(0)
        old_stps.pop(0)
        ro.pop(0)
    old_dirs.append(y)
    old_stps.append(s)
    ro.append(1.0 / ys)
    return ys / float(y.dot(y))


def _two_loop_direction(flat_grad: Tensor, old_dirs: list[Tensor], old_stps: list[Tensor], ro: list,
                        H_diag: Any, al: list) -> Tensor:
    """The L-BFGS two-loop recursion: the approximate inverse Hessian applied to `-flat_grad`."""
    q = -flat_grad
    for i in range(len(old_dirs) - 1, -1, -1):
        al[i] = float(old_stps[i].dot(q)) * float(ro[i])
        q.add_(old_dirs[i], alpha=-al[i])
    r = q * float(H_diag)
    for i in range(len(old_dirs)):
        be_i = float(old_dirs[i].dot(r)) * float(ro[i])
        r.add_(old_stps[i], alpha=al[i] - be_i)
    return r


def _cubic_interpolate(x1: float, f1: float, g1: float, x2: float, f2: float, g2: float,
                       bounds: tuple[float, float] | None = None) -> float:
    """The minimizer of the cubic through (x1, f1, g1) and (x2, f2, g2), clamped to `bounds`
    (default: the interval); the interval's midpoint when the cubic has no minimum."""
    xmin_bound, xmax_bound = bounds if bounds is not None else (min(x1, x2), max(x1, x2))
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1 ** 2 - g1 * g2
    if d2_square < 0:
        return (xmin_bound + xmax_bound) / 2.0
    d2 = d2_square ** 0.5
    if x1 <= x2:
        min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(min_pos, xmin_bound), xmax_bound)


class _Bracket:
    """The line search's interval: step sizes with their losses, gradients and directional derivatives."""

    def __init__(self, points: list[tuple[float, float, Tensor, float]]) -> None:
        self.t = [pt[0] for pt in points]
        self.f = [pt[1] for pt in points]
        self.g = [pt[2] for pt in points]
        self.gtd = [pt[3] for pt in points]

    def set(self, i: int, t: float, f: float, g: Tensor, gtd: float) -> None:
        self.t[i], self.f[i], self.g[i], self.gtd[i] = t, f, g, gtd

    def low_high(self) -> tuple[int, int]:
        return (0, 1) if self.f[0] <= self.f[-1] else (1, 0)


def _strong_wolfe(objective: Objective, x: list[Tensor], t: float, d: Tensor, f: float, g: Tensor, gtd: float,
                  c1: float = 1e-4, c2: float = 0.9, tolerance_change: float = 1e-9,
                  max_ls: int = 25) -> tuple[float, Tensor, float, int]:
    """PyTorch's strong-Wolfe line search (Nocedal & Wright, algorithms 3.5 and 3.6): bracket a step
    satisfying sufficient decrease (c1) and the curvature condition (c2), then zoom in by cubic
    interpolation. Returns the step's loss, flat gradient, size, and the number of evaluations."""
    d_norm = float(d.abs().max())
    g = g.clone()
    f_new, g_new = objective(x, t, d)
    ls_func_evals = 1
    gtd_new = float(g_new.dot(d))
    t_prev, f_prev, g_prev, gtd_prev = 0.0, f, g, gtd
    done = False
    ls_iter = 0
    bracket = None
    while ls_iter < max_ls:  # bracketing phase
        sufficient_decrease = not (f_new > f + c1 * t * gtd or (ls_iter > 1 and f_new >= f_prev))
        if sufficient_decrease and abs(gtd_new) <= -c2 * gtd:  # both Wolfe conditions: done
            bracket = _Bracket([(t, f_new, g_new, gtd_new)])
            done = True
            break
        if not sufficient_decrease or gtd_new >= 0:  # a minimum lies between the last two steps
            bracket = _Bracket([(t_prev, f_prev, g_prev, gtd_prev), (t, f_new, g_new.clone(), gtd_new)])
            break
        min_step, max_step = t + 0.01 * (t - t_prev), t * 10
        t_prev, t = t, _cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step))
        f_prev, g_prev, gtd_prev = f_new, g_new.clone(), gtd_new
        f_new, g_new = objective(x, t, d)
        ls_func_evals += 1
        gtd_new = float(g_new.dot(d))
        ls_iter += 1
    if ls_iter == max_ls:
        bracket = _Bracket([(0.0, f, g, gtd), (t, f_new, g_new, gtd_new)])

    insuf_progress = False
    low, high = bracket.low_high()
    while not done and ls_iter < max_ls:  # zoom phase
        if abs(bracket.t[1] - bracket.t[0]) * d_norm < tolerance_change:
            break
        t = _cubic_interpolate(bracket.t[0], bracket.f[0], bracket.gtd[0], bracket.t[1], bracket.f[1], bracket.gtd[1])
        t, insuf_progress = _keep_away_from_ends(t, min(bracket.t), max(bracket.t), insuf_progress)
        f_new, g_new = objective(x, t, d)
        ls_func_evals += 1
        gtd_new = float(g_new.dot(d))
        ls_iter += 1
        if f_new > (f + c1 * t * gtd) or f_new >= bracket.f[low]:
            bracket.set(high, t, f_new, g_new.clone(), gtd_new)
            low, high = bracket.low_high()
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket.t[high] - bracket.t[low]) >= 0:
                bracket.set(high, bracket.t[low], bracket.f[low], bracket.g[low], bracket.gtd[low])
            bracket.set(low, t, f_new, g_new.clone(), gtd_new)
    return bracket.f[low], bracket.g[low], bracket.t[low], ls_func_evals


def _keep_away_from_ends(t: float, lo: float, hi: float, insuf_progress: bool) -> tuple[float, bool]:
    """Move a trial step that fell within 10% of the bracket's ends (or outside it) back to 10% in,
    when the last trial also made too little progress: the zoom must shrink the bracket."""
    eps = 0.1 * (hi - lo)
    if min(hi - t, t - lo) >= eps:
        return t, False
    if not (insuf_progress or t >= hi or t <= lo):
        return t, True
    return (hi - eps if abs(t - hi) < abs(t - lo) else lo + eps), False

"""The op table: every eager op of issue #2 as reusable data.

Each `OpCase` names a function `fn(lib, *tensors)` that runs with `lib=jitorch` or `lib=torch` (the
APIs match), the specs of its inputs and whether to check gradients (`TOLERANCES` holds how close
floats must be, per dtype). `tests/harness.py`
runs a case in both libraries on seeded random inputs and compares them; the same table is meant to
run later through `jitorch.compile` and the Triton interpreter (the harness's `transform` hook).

Domains of input values (keep inputs away from kinks and ties so gradients are well defined):
    "real"      standard normal
    "positive"  uniform in [0.5, 2]
    "unit"      uniform in [0.05, 0.95]
    "nonzero"   |x| uniform in [0.5, 2], random sign
    "distinct"  all values different (at least 0.5 apart): for sort, topk, max with indices
    "bool"      random booleans
    ("int", lo, hi)       integers in [lo, hi)
    ("perm", dim, size)   integer indices in [0, size), all different along `dim` (for scatter)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

FLOATS = ("float32", "float64", "float16", "bfloat16")
SMALL_INTS = ("uint8", "int8", "int16")  # (values of an integer domain out of their range wrap, as in torch)
INTS = ("int32", "int64") + SMALL_INTS
ALL = FLOATS + INTS + ("bool",)

# How far a float result may be from PyTorch's, in multiples of its dtype's machine epsilon (float16
# 2**-10, bfloat16 2**-7), as (forward values, gradients): |ours - torch| <= n * eps * (|torch| + the
# output's largest finite |torch|). The second term holds each element to its output's own scale (a
# sum that cancels is exact only to its inputs' scale). float16 and bfloat16 ops compute in float32
# and round once in both libraries, so they agree to about one rounding; float32 and float64
# accumulate in their own precision, where summation orders differ; gradients chain several ops.
TOLERANCES = {
    "float64": (32, 128),
    "float32": (32, 128),
    "float16": (2, 4),
    "bfloat16": (2, 4),
}


@dataclass(frozen=True)
class Input:
    """One input: its shape, dtype name, value domain, and whether it may require grad."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    domain: str | tuple = "real"
    grad: bool = True


@dataclass(frozen=True)
class OpCase:
    """One op on one set of input specs."""

    name: str
    fn: Callable
    inputs: tuple[Input, ...]
    grad: bool = True
    tags: tuple[str, ...] = field(default=())

    def __repr__(self) -> str:
        return f"OpCase({self.name})"


def X(*shape: int, dtype: str = "float32", domain: str | tuple = "real", grad: bool = True) -> Input:
    """Shorthand for an `Input`."""
    return Input(tuple(shape), dtype, domain, grad)


CASES: list[OpCase] = []


def case(name: str, fn: Callable, *inputs: Input, grad: bool = True, tags=()) -> None:
    """Add one case to the table (names must be unique: they are the test ids)."""
    if any(c.name == name for c in CASES):
        raise ValueError(f"duplicate op case {name!r}")
    CASES.append(OpCase(name, fn, tuple(inputs), grad, tuple(tags)))


def _is_float(dtype: str) -> bool:
    return dtype in FLOATS


# ---------------------------------------------------------------------------------------------
# dtype promotion: tensor-tensor, tensor-scalar, 0-d tensors

_PROMO_OPS = {
    "add": lambda lib, a, b: a + b,
    "mul": lambda lib, a, b: a * b,
    "div": lambda lib, a, b: a / b,
    "lt": lambda lib, a, b: a < b,
    "maximum": lambda lib, a, b: lib.maximum(a, b),
    "where": lambda lib, a, b: lib.where(a > 0, a, b),
}


def _domain_for(dtype: str) -> str | tuple:
    return "bool" if dtype == "bool" else ("int", 1, 6) if dtype in INTS else "positive"


def _promotion_cases() -> None:
    for opname, fn in _PROMO_OPS.items():
        for a in ALL:
            for b in ALL:
                if opname == "where" and (a == "bool" or b == "bool"):
                    continue  # `a > 0` on bools: covered by the comparison ops
                grad = _is_float(a) and _is_float(b) and opname != "lt"
                case(
                    f"promote_{opname}_{a}_{b}",
                    fn,
                    X(2, 3, dtype=a, domain=_domain_for(a)),
                    X(2, 3, dtype=b, domain=_domain_for(b)),
                    grad=grad,
                    tags=("promotion",),
                )
        for a in ALL:  # a 0-d tensor against a dimensioned one, both ways round
            for b in ("float16", "float64", "int32", "int64", "bool"):
                case(
                    f"promote0d_{opname}_{a}_0d{b}",
                    fn,
                    X(3, dtype=a, domain=_domain_for(a)),
                    X(dtype=b, domain=_domain_for(b)),
                    grad=False,
                    tags=("promotion",),
                )
                case(
                    f"promote0d_{opname}_0d{b}_{a}",
                    fn,
                    X(dtype=b, domain=_domain_for(b)),
                    X(3, dtype=a, domain=_domain_for(a)),
                    grad=False,
                    tags=("promotion",),
                )


_SCALARS = {"true": True, "int": 3, "float": 2.5, "negint": -2}


def _scalar_cases() -> None:
    ops = {
        "add": (lambda s: lambda lib, x: x + s),
        "radd": (lambda s: lambda lib, x: s + x),
        "sub": (lambda s: lambda lib, x: x - s),
        "rsub": (lambda s: lambda lib, x: s - x),
        "mul": (lambda s: lambda lib, x: x * s),
        "rmul": (lambda s: lambda lib, x: s * x),
        "div": (lambda s: lambda lib, x: x / s),
        "rdiv": (lambda s: lambda lib, x: s / x),
        "pow": (lambda s: lambda lib, x: x**s),
        "rpow": (lambda s: lambda lib, x: s**x),
        "eq": (lambda s: lambda lib, x: x == s),
        "ge": (lambda s: lambda lib, x: x >= s),
        "floordiv": (lambda s: lambda lib, x: x // s),
        "mod": (lambda s: lambda lib, x: x % s),
    }
    for opname, make in ops.items():
        for sname, s in _SCALARS.items():
            for dtype in ALL:
                if dtype == "bool" and opname in (
                    "sub",
                    "rsub",
                    "pow",
                    "rpow",
                    "floordiv",
                    "mod",
                    "div",
                    "rdiv",
                ):
                    continue  # bool arithmetic: PyTorch refuses or is ill-defined
                if isinstance(s, bool) and opname in ("sub", "rsub", "floordiv", "mod", "pow", "rpow"):
                    continue
                if opname in ("rdiv", "floordiv", "mod") and dtype in INTS and s == 0:
                    continue
                if opname == "pow" and dtype in INTS and s < 0:
                    continue  # integers to negative powers: PyTorch errors
                if opname == "rpow" and (s < 0 and _is_float(dtype) or dtype == "bool"):
                    continue  # negative base to a real power: nan
                domain = "bool" if dtype == "bool" else ("int", 1, 5) if dtype in INTS else "positive"
                grad = _is_float(dtype) and opname not in ("eq", "ge", "floordiv", "mod")
                case(
                    f"scalar_{opname}_{sname}_{dtype}",
                    make(s),
                    X(2, 3, dtype=dtype, domain=domain),
                    grad=grad,
                    tags=("promotion",),
                )


_promotion_cases()
_scalar_cases()

# ---------------------------------------------------------------------------------------------
# elementwise math

_UNARY = {
    "neg": ("real", lambda lib, x: -x),
    "exp": ("real", lambda lib, x: x.exp()),
    "log": ("positive", lambda lib, x: lib.log(x)),
    "log1p": ("unit", lambda lib, x: x.log1p()),
    "expm1": ("real", lambda lib, x: lib.expm1(x)),
    "sqrt": ("positive", lambda lib, x: x.sqrt()),
    "rsqrt": ("positive", lambda lib, x: lib.rsqrt(x)),
    "sin": ("real", lambda lib, x: x.sin()),
    "cos": ("real", lambda lib, x: lib.cos(x)),
    "tanh": ("real", lambda lib, x: x.tanh()),
    "sigmoid": ("real", lambda lib, x: lib.sigmoid(x)),
    "abs": ("nonzero", lambda lib, x: x.abs()),
    "sign": ("nonzero", lambda lib, x: lib.sign(x)),
    "floor": ("real", lambda lib, x: x.floor()),
    "ceil": ("real", lambda lib, x: lib.ceil(x)),
    "round": ("real", lambda lib, x: (x * 3).round()),
    "trunc": ("real", lambda lib, x: lib.trunc(x * 3)),
    "reciprocal": ("nonzero", lambda lib, x: x.reciprocal()),
    "erf": ("real", lambda lib, x: lib.erf(x)),
    "square": ("real", lambda lib, x: x.square()),
    "relu": ("nonzero", lambda lib, x: x.relu()),
    "exp2": ("real", lambda lib, x: lib.exp2(x)),
    "log2": ("positive", lambda lib, x: x.log2()),
    "log10": ("positive", lambda lib, x: lib.log10(x)),
    "clamp": ("real", lambda lib, x: x.clamp(-0.5, 0.7)),
    "clamp_min": ("real", lambda lib, x: lib.clamp(x, min=-0.25)),
    "clamp_max": ("real", lambda lib, x: x.clamp(max=0.3)),
    "abs_op": ("nonzero", lambda lib, x: abs(x)),
    "pos_op": ("real", lambda lib, x: +x),
}

for _name, (_domain, _fn) in _UNARY.items():
    for _dtype in FLOATS:
        case(f"{_name}_{_dtype}", _fn, X(3, 4, dtype=_dtype, domain=_domain), tags=("unary",))

# integer inputs: PyTorch promotes the float-valued functions to float32; others keep the dtype
for _name in (
    "neg",
    "abs",
    "sign",
    "floor",
    "ceil",
    "round",
    "exp",
    "log",
    "sqrt",
    "sin",
    "tanh",
    "sigmoid",
    "square",
    "clamp",
    "relu",
):
    _domain, _fn = _UNARY[_name]
    for _dtype in INTS:
        case(
            f"{_name}_{_dtype}", _fn, X(3, 4, dtype=_dtype, domain=("int", 1, 9)), grad=False, tags=("unary",)
        )

_BINARY = {
    "add": ("real", "real", lambda lib, a, b: a + b),
    "add_alpha": ("real", "real", lambda lib, a, b: lib.add(a, b, alpha=2)),
    "sub": ("real", "real", lambda lib, a, b: a - b),
    "sub_alpha": ("real", "real", lambda lib, a, b: a.sub(b, alpha=0.5)),
    "mul": ("real", "real", lambda lib, a, b: a * b),
    "div": ("real", "nonzero", lambda lib, a, b: a / b),
    "div_floor": ("real", "nonzero", lambda lib, a, b: lib.div(a, b, rounding_mode="floor")),
    "div_trunc": ("real", "nonzero", lambda lib, a, b: a.div(b, rounding_mode="trunc")),
    "pow": ("positive", "real", lambda lib, a, b: a**b),
    "pow_fn": ("positive", "real", lambda lib, a, b: lib.pow(a, b)),
    "maximum": ("distinct", "distinct", lambda lib, a, b: lib.maximum(a, b)),
    "minimum": ("distinct", "distinct", lambda lib, a, b: a.minimum(b)),
    "max_binary": ("distinct", "distinct", lambda lib, a, b: lib.max(a, b)),
    "remainder": ("real", "nonzero", lambda lib, a, b: a % b),
    "floor_divide": ("real", "nonzero", lambda lib, a, b: a // b),
    "atan2_like_where": ("real", "real", lambda lib, a, b: lib.where(a > b, a * b, a - b)),
    "lerp": ("real", "real", lambda lib, a, b: lib.lerp(a, b, 0.3)),
}

for _name, (_da, _db, _fn) in _BINARY.items():
    for _dtype in FLOATS:
        case(
            f"{_name}_{_dtype}",
            _fn,
            X(3, 4, dtype=_dtype, domain=_da),
            X(3, 4, dtype=_dtype, domain=_db),
            grad=_name not in ("div_floor", "div_trunc", "floor_divide"),
            tags=("binary",),
        )

for _name, _fn in [
    ("add", lambda lib, a, b: a + b),
    ("sub", lambda lib, a, b: a - b),
    ("mul", lambda lib, a, b: a * b),
    ("div", lambda lib, a, b: a / b),
    ("floordiv", lambda lib, a, b: a // b),
    ("mod", lambda lib, a, b: a % b),
    ("div_floor", lambda lib, a, b: a.div(b, rounding_mode="floor")),
    ("div_trunc", lambda lib, a, b: lib.div(a, b, rounding_mode="trunc")),
    ("pow", lambda lib, a, b: a ** b.abs()),
    ("maximum", lambda lib, a, b: lib.maximum(a, b)),
    ("minimum", lambda lib, a, b: lib.minimum(a, b)),
]:
    for _dtype in INTS:
        case(
            f"{_name}_{_dtype}",
            _fn,
            X(3, 4, dtype=_dtype, domain=("int", -9, 10)),
            X(3, 4, dtype=_dtype, domain=("int", 1, 4)),
            grad=False,
            tags=("binary",),
        )
        case(
            f"{_name}_neg_divisor_{_dtype}",
            _fn,
            X(3, 4, dtype=_dtype, domain=("int", -9, 10)),
            X(3, 4, dtype=_dtype, domain=("int", -4, -1)),
            grad=False,
            tags=("binary",),
        )

# broadcasting (gradients reduce back to each input's shape)
for _name, _sa, _sb in [
    ("row", (3, 4), (4,)),
    ("col", (3, 4), (3, 1)),
    ("outer", (3, 1), (1, 4)),
    ("batch", (2, 3, 4), (3, 1)),
    ("scalar0d", (3, 4), ()),
    ("both0d", (), ()),
    ("lead1", (1, 3, 1), (2, 1, 4)),
    ("empty", (0, 4), (4,)),
]:
    case(f"broadcast_mul_{_name}", lambda lib, a, b: a * b + a, X(*_sa), X(*_sb), tags=("broadcast",))
    case(
        f"broadcast_div_{_name}",
        lambda lib, a, b: a / b,
        X(*_sa),
        X(*_sb, domain="nonzero"),
        tags=("broadcast",),
    )
case(
    "broadcast_where",
    lambda lib, c, a, b: lib.where(c, a, b),
    X(3, 1, dtype="bool", domain="bool"),
    X(1, 4),
    X(2, 1, 1),
    tags=("broadcast",),
)
case("broadcast_to", lambda lib, a: a.broadcast_to((2, 3, 4)) * 2, X(3, 1), tags=("broadcast",))

# comparisons and logic
_CMP = {
    "eq": lambda lib, a, b: a == b,
    "ne": lambda lib, a, b: a != b,
    "lt": lambda lib, a, b: a < b,
    "le": lambda lib, a, b: lib.le(a, b),
    "gt": lambda lib, a, b: a > b,
    "ge": lambda lib, a, b: a.ge(b),
}
for _name, _fn in _CMP.items():
    for _dtype in ALL:
        _dom = "bool" if _dtype == "bool" else ("int", 0, 3)  # small ranges so equality happens
        case(
            f"cmp_{_name}_{_dtype}",
            _fn,
            X(4, 5, dtype=_dtype, domain=_dom),
            X(4, 5, dtype=_dtype, domain=_dom),
            grad=False,
            tags=("compare",),
        )

_LOGIC = {
    "and": lambda lib, a, b: lib.logical_and(a, b),
    "or": lambda lib, a, b: a.logical_or(b),
    "xor": lambda lib, a, b: lib.logical_xor(a, b),
    "not": lambda lib, a, b: lib.logical_not(a),
    "and_op": lambda lib, a, b: a & b,
    "or_op": lambda lib, a, b: a | b,
    "xor_op": lambda lib, a, b: a ^ b,
    "invert": lambda lib, a, b: ~a,
}
for _name, _fn in _LOGIC.items():
    case(
        f"logic_{_name}_bool",
        _fn,
        X(4, 5, dtype="bool", domain="bool"),
        X(4, 5, dtype="bool", domain="bool"),
        grad=False,
        tags=("logic",),
    )
for _name in ("and", "or", "xor", "not"):
    case(
        f"logic_{_name}_float",
        _LOGIC[_name],
        X(4, 5, domain=("int", 0, 2)),
        X(4, 5, domain=("int", 0, 2)),
        grad=False,
        tags=("logic",),
    )
    case(
        f"logic_{_name}_int64",
        _LOGIC[_name],
        X(4, 5, dtype="int64", domain=("int", 0, 2)),
        X(4, 5, dtype="int64", domain=("int", 0, 2)),
        grad=False,
        tags=("logic",),
    )

_BITWISE = {
    "and": lambda lib, a, b: a & b,
    "or": lambda lib, a, b: a.bitwise_or(b),
    "xor": lambda lib, a, b: a ^ b,
    "not": lambda lib, a, b: ~a,
    "not_fn": lambda lib, a, b: a.bitwise_not(),
    "and_scalar": lambda lib, a, b: a & 6,
    "ror_scalar": lambda lib, a, b: 5 | a,
}
for _name, _fn in _BITWISE.items():
    for _dtype in INTS:
        case(
            f"bitwise_{_name}_{_dtype}",
            _fn,
            X(4, 5, dtype=_dtype, domain=("int", -20, 20)),
            X(4, 5, dtype=_dtype, domain=("int", -20, 20)),
            grad=False,
            tags=("logic",),
        )
case(
    "bitwise_and_int32_int64",
    lambda lib, a, b: a & b,
    X(4, dtype="int32", domain=("int", 0, 20)),
    X(4, dtype="int64", domain=("int", 0, 20)),
    grad=False,
    tags=("logic",),
)

case("where", lambda lib, a, b: lib.where(a > 0, a, b), X(3, 4), X(3, 4))
case("where_scalar_other", lambda lib, a: lib.where(a > 0, a, 0.5), X(3, 4))
case("where_scalar_input", lambda lib, a: lib.where(a > 0, 2.0, a), X(3, 4))
case("where_method", lambda lib, a, b: a.where(b > 0, b), X(3, 4), X(3, 4))
case(
    "where_int_float",
    lambda lib, a, b: lib.where(b > 0, a, b),
    X(3, 4, dtype="int64", domain=("int", 0, 9)),
    X(3, 4),
    grad=False,
)
case(
    "isnan_isinf",
    lambda lib, a: lib.isnan(a.log()) | a.reciprocal().isinf(),
    X(3, 4, domain=("int", -1, 2)),
    grad=False,
)
case("isfinite", lambda lib, a: (a / a.round()).isfinite(), X(3, 4), grad=False)

# ---------------------------------------------------------------------------------------------
# reductions

_REDUCE = {
    "sum": ("real", lambda lib, x: x.sum()),
    "sum_dim": ("real", lambda lib, x: x.sum(1)),
    "sum_neg_dim": ("real", lambda lib, x: lib.sum(x, -1)),
    "sum_tuple_keepdim": ("real", lambda lib, x: x.sum((0, 2), keepdim=True)),
    "sum_dim_kw": ("real", lambda lib, x: x.sum(dim=(2, 0))),
    "mean": ("real", lambda lib, x: x.mean()),
    "mean_dim": ("real", lambda lib, x: lib.mean(x, 1, keepdim=True)),
    "mean_tuple": ("real", lambda lib, x: x.mean((0, 1))),
    "prod": ("nonzero", lambda lib, x: x.prod()),
    "prod_dim": ("nonzero", lambda lib, x: x.prod(1)),
    "prod_keepdim": ("nonzero", lambda lib, x: lib.prod(x, -1, keepdim=True)),
    "amax": ("distinct", lambda lib, x: x.amax()),
    "amax_tuple": ("distinct", lambda lib, x: lib.amax(x, (0, 2))),
    "amin_keepdim": ("distinct", lambda lib, x: x.amin(1, keepdim=True)),
    "max_all": ("distinct", lambda lib, x: x.max()),
    "min_all": ("distinct", lambda lib, x: lib.min(x)),
    "max_dim": ("distinct", lambda lib, x: x.max(1)),
    "max_dim_keepdim": ("distinct", lambda lib, x: lib.max(x, dim=-1, keepdim=True)),
    "min_dim": ("distinct", lambda lib, x: x.min(0)),
    "max_dim_values": ("distinct", lambda lib, x: x.max(dim=2).values),
    "min_dim_indices": ("distinct", lambda lib, x: x.min(dim=2).indices),
    "argmax": ("distinct", lambda lib, x: x.argmax()),
    "argmax_dim": ("distinct", lambda lib, x: lib.argmax(x, 1)),
    "argmax_keepdim": ("distinct", lambda lib, x: x.argmax(dim=-1, keepdim=True)),
    "argmin_dim": ("distinct", lambda lib, x: x.argmin(0)),
    "argmin": ("distinct", lambda lib, x: lib.argmin(x)),
    "var": ("real", lambda lib, x: x.var()),
    "var_dim": ("real", lambda lib, x: x.var(1)),
    "var_correction0": ("real", lambda lib, x: lib.var(x, (0, 2), correction=0)),
    "var_keepdim": ("real", lambda lib, x: x.var(-1, keepdim=True, correction=2)),
    "std": ("real", lambda lib, x: x.std()),
    "std_dim": ("real", lambda lib, x: lib.std(x, dim=0, correction=0)),
    "std_unbiased_false": ("real", lambda lib, x: x.std(1, unbiased=False)),
    "logsumexp": ("real", lambda lib, x: x.logsumexp(1)),
    "logsumexp_tuple": ("real", lambda lib, x: lib.logsumexp(x * 30, (0, 2), keepdim=True)),
    "cumsum": ("real", lambda lib, x: x.cumsum(1)),
    "cumsum_neg": ("real", lambda lib, x: lib.cumsum(x, dim=-1)),
    "norm": ("nonzero", lambda lib, x: x.norm()),
    "softmax": ("real", lambda lib, x: x.softmax(-1)),
    "log_softmax": ("real", lambda lib, x: x.log_softmax(1)),
}
for _name, (_domain, _fn) in _REDUCE.items():
    for _dtype in ("float32", "float64"):
        case(f"{_name}_{_dtype}", _fn, X(3, 4, 5, dtype=_dtype, domain=_domain), tags=("reduce",))
for _name in (
    "sum",
    "sum_dim",
    "mean_dim",
    "amax_tuple",
    "max_dim",
    "argmax_dim",
    "var_dim",
    "cumsum",
    "logsumexp",
    "prod_dim",
):
    _domain, _fn = _REDUCE[_name]
    for _dtype in ("float16", "bfloat16"):
        case(
            f"{_name}_{_dtype}",
            _fn,
            X(3, 4, 5, dtype=_dtype, domain=_domain),
            tags=("reduce",),
        )
for _name in (
    "sum",
    "sum_dim",
    "sum_tuple_keepdim",
    "prod_dim",
    "amax_tuple",
    "max_all",
    "max_dim",
    "argmax_dim",
    "argmin",
    "cumsum",
):
    _domain, _fn = _REDUCE[_name]
    for _dtype in INTS + ("bool",):
        _dom = "bool" if _dtype == "bool" else ("int", -5, 6)
        if _name in ("max_dim", "argmax_dim", "argmin") and _dtype == "bool":
            continue  # PyTorch has no argmax/argmin for bool
        case(f"{_name}_{_dtype}", _fn, X(3, 4, 5, dtype=_dtype, domain=_dom), grad=False, tags=("reduce",))

for _name, _fn in [
    ("any", lambda lib, x: x.any()),
    ("all", lambda lib, x: lib.all(x)),
    ("any_dim", lambda lib, x: x.any(1)),
    ("all_dim_keepdim", lambda lib, x: x.all(-1, keepdim=True)),
    ("any_dim_tuple", lambda lib, x: lib.any(x, dim=(0, 2))),
]:
    case(f"{_name}_bool", _fn, X(3, 4, 2, dtype="bool", domain="bool"), grad=False, tags=("reduce",))
    case(f"{_name}_float", _fn, X(3, 4, 2, domain=("int", 0, 2)), grad=False, tags=("reduce",))
    case(f"{_name}_int64", _fn, X(3, 4, 2, dtype="int64", domain=("int", 0, 2)), grad=False, tags=("reduce",))

case("amax_ties", lambda lib, x: x.amax(1), X(3, 8, domain=("int", 0, 3)), tags=("reduce",))
case("amin_ties_all", lambda lib, x: lib.amin(x), X(3, 8, domain=("int", 0, 3)), tags=("reduce",))
case("sum_0d", lambda lib, x: x.sum(), X(), tags=("reduce",))
case("cumsum_0d", lambda lib, x: x.cumsum(0), X(), tags=("reduce",))
case(
    "argmax_keepdim_all", lambda lib, x: x.argmax(keepdim=True), X(3, 4, domain="distinct"), tags=("reduce",)
)
case(
    "any_all_empty",
    lambda lib, x: (x.any(), x.all(), x.any(0), x.all(0)),
    X(0, 3, dtype="bool", domain="bool"),
    grad=False,
    tags=("reduce",),
)
case("sum_empty_dim", lambda lib, x: x.sum(0), X(0, 3), tags=("reduce",))
case("mean_0d_dim", lambda lib, x: x.mean(0), X(), tags=("reduce",))
case("sum_dtype", lambda lib, x: x.sum(1, dtype=lib.float64), X(3, 4), tags=("reduce",))

# ---------------------------------------------------------------------------------------------
# shapes and views

_VIEWS = {
    "view": ((2, 3, 4), lambda lib, x: x.view(6, 4)),
    "view_infer": ((2, 3, 4), lambda lib, x: x.view(-1, 2)),
    "view_tuple": ((2, 3, 4), lambda lib, x: x.view((4, 6))),
    "reshape": ((2, 3, 4), lambda lib, x: x.reshape(4, -1)),
    "reshape_fn": ((2, 3, 4), lambda lib, x: lib.reshape(x, (24,))),
    "reshape_noncontig": ((2, 3, 4), lambda lib, x: x.transpose(0, 2).reshape(-1)),
    "permute": ((2, 3, 4), lambda lib, x: x.permute(2, 0, 1)),
    "permute_fn": ((2, 3, 4), lambda lib, x: lib.permute(x, (1, 2, 0))),
    "transpose": ((2, 3, 4), lambda lib, x: x.transpose(0, -1)),
    "t": ((3, 4), lambda lib, x: x.t()),
    "T": ((3, 4), lambda lib, x: x.T),
    "mT": ((2, 3, 4), lambda lib, x: x.mT),
    "squeeze": ((2, 1, 4, 1), lambda lib, x: x.squeeze()),
    "squeeze_dim": ((2, 1, 4, 1), lambda lib, x: x.squeeze(1)),
    "squeeze_dim_noop": ((2, 1, 4, 1), lambda lib, x: lib.squeeze(x, 0)),
    "squeeze_tuple": ((2, 1, 4, 1), lambda lib, x: x.squeeze((1, 3))),
    "unsqueeze": ((2, 3), lambda lib, x: x.unsqueeze(1)),
    "unsqueeze_neg": ((2, 3), lambda lib, x: lib.unsqueeze(x, -1)),
    "expand": ((3, 1), lambda lib, x: x.expand(2, 3, 4)),
    "expand_keep": ((3, 1), lambda lib, x: x.expand(-1, 5)),
    "expand_as": ((3, 1), lambda lib, x: x.expand_as(lib.ones(3, 2))),
    "flatten": ((2, 3, 4), lambda lib, x: x.flatten()),
    "flatten_range": ((2, 3, 4, 5), lambda lib, x: lib.flatten(x, 1, 2)),
    "flatten_0d": ((), lambda lib, x: x.flatten()),
    "unflatten": ((2, 12), lambda lib, x: x.unflatten(1, (3, 4))),
    "unflatten_infer": ((2, 12), lambda lib, x: x.unflatten(-1, (-1, 4))),
    "narrow": ((5, 4), lambda lib, x: x.narrow(0, 1, 3)),
    "narrow_neg": ((5, 4), lambda lib, x: lib.narrow(x, -1, 1, 2)),
    "contiguous": ((3, 4), lambda lib, x: x.t().contiguous()),
    "clone": ((3, 4), lambda lib, x: x.clone()),
    "flip": ((3, 4), lambda lib, x: x.flip(0)),
    "flip_dims": ((2, 3, 4), lambda lib, x: lib.flip(x, (0, 2))),
    "movedim": ((2, 3, 4), lambda lib, x: x.movedim(0, -1)),
    "select": ((3, 4), lambda lib, x: x.select(1, 2)),
    "repeat": ((2, 3), lambda lib, x: x.repeat(2, 1, 2)),
    "unbind": ((3, 4), lambda lib, x: x.unbind(1)),
    "view_as": ((3, 4), lambda lib, x: x.view_as(lib.zeros(2, 6))),
}
for _name, (_shape, _fn) in _VIEWS.items():
    case(f"view_{_name}", _fn, X(*_shape), tags=("view",))
    case(
        f"view_{_name}_int64",
        _fn,
        X(*_shape, dtype="int64", domain=("int", -5, 5)),
        grad=False,
        tags=("view",),
    )

# ---------------------------------------------------------------------------------------------
# indexing

_INDEX = {
    "int": lambda lib, x: x[1],
    "neg_int": lambda lib, x: x[-1, 2],
    "slice": lambda lib, x: x[1:3],
    "slice_step": lambda lib, x: x[::2, 1::2],
    "slice_neg": lambda lib, x: x[-3:-1, :-1],
    "slice_oob": lambda lib, x: x[2:100],
    "none": lambda lib, x: x[None, :, None],
    "ellipsis": lambda lib, x: x[..., 1],
    "ellipsis_none": lambda lib, x: x[..., None, 0],
    "int_tensor": lambda lib, x: x[lib.tensor([0, 2, 2, -1])],
    "int_tensor_2d": lambda lib, x: x[lib.tensor([[0, 1], [3, 3]])],
    "int_tensor_dim1": lambda lib, x: x[:, lib.tensor([4, 0])],
    "two_int_tensors": lambda lib, x: x[lib.tensor([0, 1, 3]), lib.tensor([4, 0, 0])],
    "list": lambda lib, x: x[[1, 0, 1]],
    "bool_mask": lambda lib, x: x[x > 0],
    "bool_mask_rows": lambda lib, x: x[lib.tensor([True, False, True, True])],
    "bool_mask_dim1": lambda lib, x: x[:, lib.tensor([True, False, True, False, True])],
    "mixed": lambda lib, x: x[1:, lib.tensor([0, 2])],
    "int_and_slice_3d": lambda lib, x: x.reshape(2, 2, 5)[:, 1, 1:4],
    "tensor_scalar_index": lambda lib, x: x[lib.tensor(2)],
}
for _name, _fn in _INDEX.items():
    case(f"index_{_name}", _fn, X(4, 5), tags=("index",))
    case(
        f"index_{_name}_int32",
        _fn,
        X(4, 5, dtype="int32", domain=("int", -5, 5)),
        grad=False,
        tags=("index",),
    )


def _setitem(key_fn, value_fn):
    """x = a * 1; x[key] = value: an in-place write recorded by autograd."""

    def fn(lib, a, w):
        x = a * 1
        x[key_fn(lib)] = value_fn(w)
        return x

    return fn


case("setitem_int", _setitem(lambda lib: 0, lambda w: w[0]), X(3, 4), X(2, 4), tags=("index",))
case("setitem_slice", _setitem(lambda lib: (slice(1, 3),), lambda w: w), X(3, 4), X(2, 4), tags=("index",))
case(
    "setitem_broadcast",
    _setitem(lambda lib: (slice(None), 1), lambda w: w[0, 0]),
    X(3, 4),
    X(2, 4),
    tags=("index",),
)
case(
    "setitem_tensor", _setitem(lambda lib: lib.tensor([2, 0]), lambda w: w), X(3, 4), X(2, 4), tags=("index",)
)
case(
    "setitem_mask",
    _setitem(lambda lib: lib.tensor([True, False, True]), lambda w: w * 2),
    X(3, 4),
    X(2, 4),
    tags=("index",),
)
case("setitem_scalar", lambda lib, a: _set_scalar(a), X(3, 4), tags=("index",))


def _set_scalar(a):
    x = a * 2
    x[x > 0] = 0.5  # a mask computed from the data: becomes where(mask, 0.5, x), so it also compiles
    x[0, ..., 1] = -1.0
    return x


def _set_by_mask(mask_fn, value_fn):
    """x = a * 1; x[mask_fn(x)] = value_fn(w): a data-dependent mask with one value for every
    selected element (autograd: none to a where written, the selected elements' sum to w)."""

    def fn(lib, a, w):
        x = a * 1
        x[mask_fn(x)] = value_fn(w)
        return x

    return fn


case("setitem_mask_0d_value", _set_by_mask(lambda x: x > 0, lambda w: w.sum()), X(3, 4), X(2, 4), tags=("index",))
case("setitem_row_mask", _set_by_mask(lambda x: x.sum(-1) > 0, lambda w: w[0]), X(3, 4), X(2, 4), tags=("index",))
case(
    "setitem_row_mask_leading_one",
    _set_by_mask(lambda x: (x.sum(-1) > 0,), lambda w: w[:1, None]),
    X(3, 4),
    X(2, 4),
    tags=("index",),
)
case(
    "setitem_mask_int",
    _set_by_mask(lambda x: x > 0, lambda w: w.sum()),
    X(3, 4, dtype="int64", domain=("int", -5, 5)),
    X(2, 4),
    grad=False,
    tags=("index",),
)


# ---------------------------------------------------------------------------------------------
# joining and splitting

case("cat", lambda lib, a, b: lib.cat([a, b]), X(2, 3), X(4, 3), tags=("join",))
case("cat_dim1", lambda lib, a, b: lib.cat((a, b, a), dim=1), X(2, 3), X(2, 1), tags=("join",))
case("cat_neg_dim", lambda lib, a, b: lib.cat([a, b], -1), X(2, 2, 3), X(2, 2, 2), tags=("join",))
case("cat_promote", lambda lib, a, b: lib.cat([a, b]), X(2, 3), X(1, 3, dtype="float64"), tags=("join",))
case(
    "cat_int_float",
    lambda lib, a, b: lib.cat([a, b]),
    X(2, 3, dtype="int64", domain=("int", 0, 5)),
    X(1, 3),
    tags=("join",),
)
case("concat", lambda lib, a, b: lib.concat([a, b], dim=0), X(2, 3), X(1, 3), tags=("join",))
case("stack", lambda lib, a, b: lib.stack([a, b]), X(2, 3), X(2, 3), tags=("join",))
case("stack_dim", lambda lib, a, b: lib.stack([a, b, a], dim=-1), X(2, 3), X(2, 3), tags=("join",))
case("split_size", lambda lib, x: x.split(2), X(5, 3), tags=("join",))
case("split_sections", lambda lib, x: lib.split(x, [1, 3, 1], dim=0), X(5, 3), tags=("join",))
case("split_dim1", lambda lib, x: x.split(2, dim=1), X(3, 5), tags=("join",))
case("chunk", lambda lib, x: x.chunk(3), X(7, 2), tags=("join",))
case("chunk_dim", lambda lib, x: lib.chunk(x, 2, dim=-1), X(2, 5), tags=("join",))
case("chunk_more_than_size", lambda lib, x: x.chunk(4), X(6, 2), tags=("join",))

# ---------------------------------------------------------------------------------------------
# matrix products

_MATMUL = [
    ("1d_1d", (4,), (4,)),
    ("1d_2d", (4,), (4, 3)),
    ("2d_1d", (3, 4), (4,)),
    ("2d_2d", (3, 4), (4, 5)),
    ("batched", (2, 3, 4), (2, 4, 5)),
    ("broadcast", (2, 1, 3, 4), (5, 4, 2)),
    ("3d_2d", (2, 3, 4), (4, 5)),
    ("1d_3d", (4,), (2, 4, 3)),
    ("3d_1d", (2, 3, 4), (4,)),
]
for _name, _sa, _sb in _MATMUL:
    case(f"matmul_{_name}", lambda lib, a, b: lib.matmul(a, b), X(*_sa), X(*_sb), tags=("matmul",))
case("matmul_op", lambda lib, a, b: a @ b, X(3, 4), X(4, 2), tags=("matmul",))
case(
    "matmul_float64",
    lambda lib, a, b: a @ b,
    X(3, 4, dtype="float64"),
    X(4, 2, dtype="float64"),
    tags=("matmul",),
)
case(
    "matmul_float16",
    lambda lib, a, b: a @ b,
    X(3, 4, dtype="float16"),
    X(4, 2, dtype="float16"),
    tags=("matmul",),
)
case(
    "matmul_bfloat16",
    lambda lib, a, b: a @ b,
    X(3, 4, dtype="bfloat16"),
    X(4, 2, dtype="bfloat16"),
    tags=("matmul",),
)
case(
    "matmul_int64",
    lambda lib, a, b: a @ b,
    X(3, 4, dtype="int64", domain=("int", -3, 4)),
    X(4, 2, dtype="int64", domain=("int", -3, 4)),
    grad=False,
    tags=("matmul",),
)
case("mm", lambda lib, a, b: lib.mm(a, b), X(3, 4), X(4, 2), tags=("matmul",))
case("bmm", lambda lib, a, b: lib.bmm(a, b), X(2, 3, 4), X(2, 4, 5), tags=("matmul",))
case("bmm_method", lambda lib, a, b: a.bmm(b), X(3, 1, 4), X(3, 4, 2), tags=("matmul",))
case("dot", lambda lib, a, b: lib.dot(a, b), X(5), X(5), tags=("matmul",))
case("outer", lambda lib, a, b: lib.outer(a, b), X(3), X(4), tags=("matmul",))
_EINSUM = [
    ("matmul", "ij,jk->ik", ((3, 4), (4, 5))),
    ("batched", "bij,bjk->bik", ((2, 3, 4), (2, 4, 5))),
    ("diagonal", "ii->i", ((4, 4),)),
    ("trace", "ii->", ((4, 4),)),
    ("diag_3d", "iijk->ik", ((3, 3, 2, 4),)),
    ("sum_all", "ij->", ((3, 4),)),
    ("transpose", "ij->ji", ((3, 4),)),
    ("outer", "i,j->ij", ((3,), (4,))),
    ("implicit", "ij,jk", ((3, 4), (4, 2))),
    ("three", "ij,jk,kl->il", ((2, 3), (3, 4), (4, 2))),
    ("reduce_own", "ij,j->i", ((3, 4), (4,))),
    ("attention", "bhqd,bhkd->bhqk", ((2, 2, 3, 4), (2, 2, 5, 4))),
    ("spaces", "i j , j -> i", ((3, 4), (4,))),
]
for _name, _eq, _shapes in _EINSUM:
    case(
        f"einsum_{_name}",
        (lambda eq: lambda lib, *xs: lib.einsum(eq, *xs))(_eq),
        *(X(*s) for s in _shapes),
        tags=("matmul",),
    )

# ---------------------------------------------------------------------------------------------
# index ops, triangles, sorting

case(
    "gather",
    lambda lib, x, i: x.gather(1, i),
    X(3, 5),
    X(3, 4, dtype="int64", domain=("int", 0, 5)),
    tags=("index_ops",),
)
case(
    "gather_dim0",
    lambda lib, x, i: lib.gather(x, 0, i),
    X(3, 5),
    X(2, 5, dtype="int64", domain=("int", 0, 3)),
    tags=("index_ops",),
)
case(
    "gather_neg_dim",
    lambda lib, x, i: x.gather(-1, i),
    X(2, 3, 4),
    X(2, 3, 2, dtype="int64", domain=("int", 0, 4)),
    tags=("index_ops",),
)
case(
    "scatter",
    lambda lib, x, i, s: x.scatter(1, i, s),
    X(3, 5),
    X(3, 4, dtype="int64", domain=("perm", 1, 5)),
    X(3, 4),
    tags=("index_ops",),
)
case(
    "scatter_dim0",
    lambda lib, x, i, s: lib.scatter(x, 0, i, s),
    X(4, 3),
    X(2, 3, dtype="int64", domain=("perm", 0, 4)),
    X(2, 3),
    tags=("index_ops",),
)
# a src larger than index: PyTorch's own backward rejects it, so compare values here and check the
# gradient against finite differences in test_gradcheck.py
case(
    "scatter_dim0_larger_src",
    lambda lib, x, i, s: lib.scatter(x, 0, i, s),
    X(4, 3),
    X(2, 3, dtype="int64", domain=("perm", 0, 4)),
    X(3, 3),
    grad=False,
    tags=("index_ops",),
)
case(
    "scatter_value",
    lambda lib, x, i: x.scatter(1, i, 2.5),
    X(3, 5),
    X(3, 2, dtype="int64", domain=("perm", 1, 5)),
    tags=("index_ops",),
)
case(
    "scatter_add",
    lambda lib, x, i, s: x.scatter_add(1, i, s),
    X(3, 5),
    X(3, 6, dtype="int64", domain=("int", 0, 5)),
    X(3, 6),
    tags=("index_ops",),
)
case(
    "scatter_add_dim0",
    lambda lib, x, i, s: lib.scatter_add(x, 0, i, s),
    X(3, 2),
    X(4, 2, dtype="int64", domain=("int", 0, 3)),
    X(4, 2),
    tags=("index_ops",),
)
case(
    "scatter_add_larger_src",
    lambda lib, x, i, s: lib.scatter_add(x, 0, i, s),
    X(3, 2),
    X(4, 2, dtype="int64", domain=("int", 0, 3)),
    X(5, 2),
    grad=False,
    tags=("index_ops",),
)
case(
    "index_select",
    lambda lib, x, i: x.index_select(0, i),
    X(4, 3),
    X(5, dtype="int64", domain=("int", 0, 4)),
    tags=("index_ops",),
)
case(
    "index_select_dim1",
    lambda lib, x, i: lib.index_select(x, 1, i),
    X(2, 4, 3),
    X(3, dtype="int64", domain=("int", 0, 4)),
    tags=("index_ops",),
)
case(
    "index_select_int32_index",
    lambda lib, x, i: x.index_select(-1, i),
    X(2, 4),
    X(3, dtype="int32", domain=("int", 0, 4)),
    tags=("index_ops",),
)
case(
    "masked_fill",
    lambda lib, x, m: x.masked_fill(m, -1.5),
    X(3, 4),
    X(3, 4, dtype="bool", domain="bool"),
    tags=("index_ops",),
)
case(
    "masked_fill_broadcast",
    lambda lib, x, m: lib.masked_fill(x, m, 0.0),
    X(3, 4),
    X(4, dtype="bool", domain="bool"),
    tags=("index_ops",),
)
case(
    "masked_fill_int",
    lambda lib, x, m: x.masked_fill(m, 7),
    X(3, 4, dtype="int64", domain=("int", 0, 5)),
    X(3, 4, dtype="bool", domain="bool"),
    grad=False,
    tags=("index_ops",),
)
case(
    "masked_fill_0d_value",
    lambda lib, x, m, v: x.masked_fill(m, v),
    X(3, 4),
    X(3, 4, dtype="bool", domain="bool"),
    X(),
    tags=("index_ops",),
)
case(
    "masked_select",
    lambda lib, x, m: x.masked_select(m),
    X(3, 4),
    X(3, 4, dtype="bool", domain="bool"),
    tags=("index_ops",),
)
for _d in (0, 1, -1, 2):
    case(f"tril_{_d}", (lambda d: lambda lib, x: x.tril(d))(_d), X(4, 5), tags=("index_ops",))
    case(f"triu_{_d}", (lambda d: lambda lib, x: lib.triu(x, d))(_d), X(2, 4, 5), tags=("index_ops",))
case(
    "tril_int",
    lambda lib, x: x.tril(),
    X(4, 4, dtype="int64", domain=("int", 1, 9)),
    grad=False,
    tags=("index_ops",),
)
case(
    "triu_bool",
    lambda lib, x: x.triu(),
    X(4, 4, dtype="bool", domain="bool"),
    grad=False,
    tags=("index_ops",),
)
case("topk", lambda lib, x: x.topk(3), X(4, 6, domain="distinct"), tags=("sort",))
case(
    "topk_smallest_dim0",
    lambda lib, x: lib.topk(x, 2, dim=0, largest=False),
    X(4, 6, domain="distinct"),
    tags=("sort",),
)
case(
    "topk_int",
    lambda lib, x: x.topk(2),
    X(3, 5, dtype="int64", domain="distinct"),
    grad=False,
    tags=("sort",),
)
case("sort", lambda lib, x: x.sort(), X(4, 6, domain="distinct"), tags=("sort",))
case(
    "sort_descending_dim0",
    lambda lib, x: lib.sort(x, dim=0, descending=True),
    X(4, 6, domain="distinct"),
    tags=("sort",),
)
case(
    "sort_stable_ties",
    lambda lib, x: x.sort(stable=True),
    X(4, 6, dtype="int64", domain=("int", 0, 3)),
    grad=False,
    tags=("sort",),
)
case(
    "sort_stable_ties_desc",
    lambda lib, x: lib.sort(x, descending=True, stable=True),
    X(4, 6, dtype="int64", domain=("int", 0, 3)),
    grad=False,
    tags=("sort",),
)
case("argsort", lambda lib, x: x.argsort(), X(4, 6, domain="distinct"), grad=False, tags=("sort",))
case(
    "argsort_desc",
    lambda lib, x: lib.argsort(x, dim=0, descending=True),
    X(4, 6, domain="distinct"),
    grad=False,
    tags=("sort",),
)
case(
    "argsort_bool_stable",
    lambda lib, x: lib.argsort(x, stable=True),
    X(3, 7, dtype="bool", domain="bool"),
    grad=False,
    tags=("sort",),
)

# ---------------------------------------------------------------------------------------------
# in-place ops (on a non-leaf copy, so autograd records them)


def _inplace(method: str, *args, **kwargs):
    def fn(lib, a, *others):
        x = a * 1
        out = getattr(x, method)(*args, *others, **kwargs)
        assert out is x, f"{method} must return self"
        return x

    return fn


_INPLACE = {
    "add_": ("real", (), {}, True),
    "sub_": ("real", (), {}, True),
    "mul_": ("real", (), {}, True),
    "div_": ("nonzero", (), {}, True),
    "pow_": ("positive", (), {}, True),
    "add_alpha_": ("real", (), {"alpha": 2}, True),
}
for _name, (_domain, _args, _kw, _two) in _INPLACE.items():
    _method = _name.replace("_alpha", "")
    case(
        f"inplace_{_name}",
        _inplace(_method, *_args, **_kw),
        X(3, 4, domain="positive"),
        X(3, 4, domain=_domain),
        tags=("inplace",),
    )
case("inplace_add_broadcast", _inplace("add_"), X(3, 4), X(4), tags=("inplace",))
for _name, _args in [
    ("add_", (2.0,)),
    ("mul_", (0.5,)),
    ("sub_", (1,)),
    ("div_", (4.0,)),
    ("pow_", (2,)),
    ("clamp_", (-0.3, 0.4)),
    ("fill_", (1.25,)),
    ("zero_", ()),
    ("exp_", ()),
    ("neg_", ()),
    ("tanh_", ()),
    ("sigmoid_", ()),
    ("abs_", ()),
    ("sqrt_", ()),
    ("log_", ()),
    ("relu_", ()),
    ("floor_", ()),
    ("round_", ()),
    ("reciprocal_", ()),
    ("sin_", ()),
    ("tril_", ()),
    ("triu_", (1,)),
    ("clip_", (None, 0.2)),
]:
    case(f"inplace_scalar_{_name}", _inplace(_name, *_args), X(3, 4, domain="positive"), tags=("inplace",))
case(
    "inplace_masked_fill_",
    lambda lib, a, m: (a * 1).masked_fill_(m, 0.0),
    X(3, 4),
    X(3, 4, dtype="bool", domain="bool"),
    tags=("inplace",),
)
case("inplace_copy_", lambda lib, a, b: (a * 1).copy_(b), X(3, 4), X(4), tags=("inplace",))
case(
    "inplace_copy_dtype",
    lambda lib, a, b: (a * 1).copy_(b),
    X(3, 4),
    X(3, 4, dtype="float64"),
    tags=("inplace",),
)
case("inplace_fill_0d_tensor", lambda lib, a, v: (a * 1).fill_(v), X(3, 4), X(), tags=("inplace",))
case(
    "inplace_scatter_add_",
    lambda lib, a, i, s: (a * 1).scatter_add_(1, i, s),
    X(3, 5),
    X(3, 4, dtype="int64", domain=("int", 0, 5)),
    X(3, 4),
    tags=("inplace",),
)
case(
    "inplace_int_mul_",
    lambda lib, a: (a * 1).mul_(3),
    X(3, 4, dtype="int64", domain=("int", 0, 9)),
    grad=False,
    tags=("inplace",),
)
case(
    "inplace_int_add_float_tensor_0d",
    lambda lib, a: (a * 1).add_(lib.tensor(2)),
    X(3, 4, dtype="int32", domain=("int", 0, 9)),
    grad=False,
    tags=("inplace",),
)
case("inplace_iadd", lambda lib, a, b: _iop(a, b, "add"), X(3, 4), X(3, 4), tags=("inplace",))
case("inplace_isub", lambda lib, a, b: _iop(a, b, "sub"), X(3, 4), X(3, 4), tags=("inplace",))
case("inplace_imul", lambda lib, a, b: _iop(a, b, "mul"), X(3, 4), X(3, 4), tags=("inplace",))
case(
    "inplace_itruediv",
    lambda lib, a, b: _iop(a, b, "truediv"),
    X(3, 4),
    X(3, 4, domain="nonzero"),
    tags=("inplace",),
)


def _iop(a, b, op: str):
    x = a * 1
    if op == "add":
        x += b
    elif op == "sub":
        x -= b
    elif op == "mul":
        x *= b
    else:
        x /= b
    return x


# ---------------------------------------------------------------------------------------------
# composites that mix several of the above

case("mlp_like", lambda lib, x, w, b: ((x @ w + b).tanh() * 2).sum(-1).softmax(0), X(4, 3), X(3, 5), X(5))
case(
    "chain_views_and_reductions",
    lambda lib, x: x.reshape(2, 3, 4).permute(2, 0, 1)[1:, :, None].expand(3, 2, 2, 3).sum((1, 2)).exp(),
    X(24),
)
case(
    "gather_after_topk",
    lambda lib, x: x.gather(1, x.topk(2).indices) * x.sum(1, keepdim=True),
    X(3, 5, domain="distinct"),
)


# ---------------------------------------------------------------------------------------------
# more ops common PyTorch code uses (jitorch/ops.py, "more ops" section)

_ZEROS = ("int", -2, 3)  # small integers in float inputs: zeros and ties on purpose
_DATA_SHAPE = ("data_dependent_shape",)  # the output's size depends on the values: eager only
for _dtype in ("float32", "float64"):
    case(f"cumprod_{_dtype}", lambda lib, x: lib.cumprod(x, 1), X(3, 7, dtype=_dtype, domain="nonzero"))
    case(f"cumprod_zeros_{_dtype}", lambda lib, x: x.cumprod(-1), X(4, 9, dtype=_dtype, domain=_ZEROS))
    case(f"repeat_interleave_int_{_dtype}", lambda lib, x: lib.repeat_interleave(x, 3, dim=1), X(2, 3, dtype=_dtype))
    case(f"kron_{_dtype}", lambda lib, a, b: lib.kron(a, b), X(2, 3, dtype=_dtype), X(4, 1, 2, dtype=_dtype))
    case(f"tensordot_int_dims_{_dtype}", lambda lib, a, b: lib.tensordot(a, b, 2), X(3, 4, 5, dtype=_dtype),
         X(4, 5, 2, dtype=_dtype))
    case(f"tensordot_pair_dims_{_dtype}", lambda lib, a, b: lib.tensordot(a, b, dims=([1, 0], [0, 2])),
         X(3, 4, 5, dtype=_dtype), X(4, 2, 3, dtype=_dtype))
    for _p in (2.0, 1.0, float("inf")):
        case(f"cdist_p{_p:g}_{_dtype}", lambda lib, a, b, p=_p: lib.cdist(a, b, p=p), X(2, 5, 3, dtype=_dtype),
             X(2, 4, 3, dtype=_dtype))
    case(f"diagonal_offset_{_dtype}", lambda lib, x: x.diagonal(1), X(4, 5, dtype=_dtype))
    case(f"diagonal_dims_{_dtype}", lambda lib, x: lib.diagonal(x, -1, 2, 0), X(3, 4, 5, dtype=_dtype))
    case(f"diag_embed_{_dtype}", lambda lib, x: lib.diag_embed(x, 1, 0, 2), X(2, 3, dtype=_dtype))
    case(f"trace_{_dtype}", lambda lib, x: lib.trace(x), X(4, 3, dtype=_dtype))
    case(f"cross_{_dtype}", lambda lib, a, b: lib.cross(a, b, dim=0), X(3, 4, dtype=_dtype), X(3, 1, dtype=_dtype))
    case(f"rot90_{_dtype}", lambda lib, x: [lib.rot90(x, k, (1, 2)) for k in (1, 2, 3, 4, -1)],
         X(2, 3, 4, dtype=_dtype))
    case(f"baddbmm_{_dtype}", lambda lib, i, a, b: lib.baddbmm(i, a, b, beta=0.5, alpha=2), X(2, 3, 5, dtype=_dtype),
         X(2, 3, 4, dtype=_dtype), X(2, 4, 5, dtype=_dtype))
    case(f"erfinv_{_dtype}", lambda lib, x: lib.erfinv(x * 1.9 - 0.95), X(40, dtype=_dtype, domain="unit"))
    case(f"var_mean_{_dtype}", lambda lib, x: lib.var_mean(x, 1, correction=0, keepdim=True), X(3, 5, dtype=_dtype))
    case(f"std_mean_{_dtype}", lambda lib, x: lib.std_mean(x, unbiased=False), X(3, 5, dtype=_dtype))
    case(f"index_add_{_dtype}", lambda lib, x, i, s: x.index_add(1, i, s, alpha=2), X(3, 5, dtype=_dtype),
         X(4, dtype="int64", domain=("int", 0, 5)), X(3, 4, dtype=_dtype))
    case(f"index_copy_{_dtype}", lambda lib, x, i, s: lib.index_copy(x, 0, i, s), X(5, 2, dtype=_dtype),
         X(3, dtype="int64", domain=("perm", 0, 5)), X(3, 2, dtype=_dtype))
    case(f"index_fill_{_dtype}", lambda lib, x, i: x.index_fill(1, i, -1.5), X(3, 5, dtype=_dtype),
         X(2, dtype="int64", domain=("perm", 0, 5)))
    for _reduce in ("sum", "prod", "mean", "amax", "amin"):
        for _self in (True, False):
            case(f"scatter_reduce_{_reduce}_{'self' if _self else 'noself'}_{_dtype}",
                 lambda lib, x, i, s, r=_reduce, inc=_self: x.scatter_reduce(1, i, s, r, include_self=inc),
                 X(3, 5, dtype=_dtype, domain="real" if _reduce != "prod" else "nonzero"),
                 X(2, 4, dtype="int64", domain=("int", 0, 5)),
                 X(2, 4, dtype=_dtype, domain="distinct" if _reduce != "prod" else "nonzero"))
    case(f"masked_scatter_{_dtype}", lambda lib, x, m, s: x.masked_scatter(m, s), X(3, 5, dtype=_dtype),
         X(5, dtype="bool"), X(4, 5, dtype=_dtype))
case("cumprod_int32_to_int64", lambda lib, x: lib.cumprod(x, 0), X(6, 2, dtype="int32", domain=("int", -3, 4)))
case("cumprod_dtype_arg", lambda lib, x: lib.cumprod(x, 0, dtype=lib.float64), X(5, dtype="int64", domain=_ZEROS))
case("repeat_interleave_flat", lambda lib, x: x.repeat_interleave(2), X(2, 3))
case("repeat_interleave_tensor", lambda lib, x, r: lib.repeat_interleave(x, r, dim=0), X(3, 2),
     X(3, dtype="int64", domain=("int", 0, 3)), tags=_DATA_SHAPE)
case("repeat_interleave_counts_only", lambda lib, r: lib.repeat_interleave(r),
     X(4, dtype="int64", domain=("int", 0, 3)), tags=_DATA_SHAPE)
case("bincount", lambda lib, x: lib.bincount(x, minlength=3), X(20, dtype="int64", domain=("int", 0, 6)),
     tags=_DATA_SHAPE)
case("bincount_weights", lambda lib, x, w: x.bincount(w), X(20, dtype="int64", domain=("int", 0, 6)), X(20),
     grad=False, tags=_DATA_SHAPE)
case("searchsorted", lambda lib, s, v: lib.searchsorted(s.sort()[0], v), X(7, domain=("int", -3, 3)),
     X(3, 4, domain=("int", -4, 4)))
case("searchsorted_right_int32", lambda lib, s, v: lib.searchsorted(s.sort()[0], v, right=True, out_int32=True),
     X(7, dtype="int64", domain=("int", -3, 3)), X(3, 4, dtype="int64", domain=("int", -4, 4)))
case("searchsorted_batched_side", lambda lib, s, v: lib.searchsorted(s.sort()[0], v, side="right"),
     X(2, 6, domain=("int", -3, 3)), X(2, 5, domain=("int", -4, 4)))
case("searchsorted_sorter", lambda lib, s, v: lib.searchsorted(s, v, sorter=s.argsort()),
     X(6, domain="distinct"), X(4, domain="real"))
case("bucketize", lambda lib, v, b: lib.bucketize(v, b.sort()[0]), X(3, 4, domain=("int", -4, 4)),
     X(5, domain=("int", -3, 3)))
case("bucketize_right", lambda lib, v, b: lib.bucketize(v, b.sort()[0], right=True),
     X(3, 4, domain=("int", -4, 4)), X(5, domain=("int", -3, 3)))
case("meshgrid_ij", lambda lib, a, b: lib.meshgrid(a, b, indexing="ij"), X(3), X(4))
case("meshgrid_xy", lambda lib, a, b, c: lib.meshgrid(a, b, c, indexing="xy"), X(2), X(3), X(4))
case("kron_int64", lambda lib, a, b: lib.kron(a, b), X(2, 2, dtype="int64", domain=("int", -3, 3)),
     X(3, dtype="int64", domain=("int", -3, 3)))
case("trace_int64", lambda lib, x: x.trace(), X(3, 3, dtype="int64", domain=("int", -5, 5)))
case("diag_embed_bool", lambda lib, x: lib.diag_embed(x, -1), X(2, 3, dtype="bool"))
case("tril_triu_indices", lambda lib: [lib.tril_indices(3, 4, 1), lib.triu_indices(4, 3, -1)])
case("index_add_int64", lambda lib, x, i, s: x.index_add(0, i, s), X(4, 3, dtype="int64", domain=("int", -5, 5)),
     X(5, dtype="int64", domain=("int", 0, 4)), X(5, 3, dtype="int64", domain=("int", -5, 5)))
case("scatter_reduce_mean_int64_floors",
     lambda lib, x, i, s: x.scatter_reduce(0, i, s, "mean", include_self=False),
     X(4, dtype="int64", domain=("int", -9, 9)), X(7, dtype="int64", domain=("int", 0, 4)),
     X(7, dtype="int64", domain=("int", -9, 9)))
case("scatter_reduce_prod_zeros", lambda lib, x, i, s: x.scatter_reduce(1, i, s, "prod"), X(3, 5, domain=_ZEROS),
     X(3, 6, dtype="int64", domain=("int", 0, 5)), X(3, 6, domain=_ZEROS))
case("scatter_reduce_amax_int64", lambda lib, x, i, s: x.scatter_reduce(0, i, s, "amax", include_self=False),
     X(4, dtype="int64", domain=("int", -9, 9)), X(7, dtype="int64", domain=("int", 0, 4)),
     X(7, dtype="int64", domain=("int", -9, 9)))
case("unique", lambda lib, x: lib.unique(x, return_inverse=True, return_counts=True),
     X(4, 5, dtype="int64", domain=("int", 0, 6)), tags=_DATA_SHAPE)
case("unique_dim", lambda lib, x: x.unique(dim=0, return_inverse=True), X(6, 2, dtype="int64", domain=("int", 0, 2)),
     tags=_DATA_SHAPE)
case("inplace_index_add_", _inplace("index_add_", 1), X(3, 5), X(4, dtype="int64", domain=("int", 0, 5)), X(3, 4),
     tags=("inplace",))
case("inplace_index_fill_", _inplace("index_fill_", 0), X(4, 2), X(2, dtype="int64", domain=("perm", 0, 4)),
     X(dtype="float32"), tags=("inplace",))
case("inplace_masked_scatter_", _inplace("masked_scatter_"), X(3, 4), X(3, 4, dtype="bool"), X(12),
     tags=("inplace",))


CASES_BY_NAME: dict[str, OpCase] = {c.name: c for c in CASES}


# ---------------------------------------------------------------------------------------------
# smaller composites: roll, tile, stacking, addmm, logaddexp, nan_to_num, diag, counting, closeness

case("roll_dims", lambda lib, a: lib.roll(a, (1, -2), (0, 1)), X(3, 4))
case("roll_flat", lambda lib, a: lib.roll(a, 5), X(3, 4))
case("tile", lambda lib, a: lib.tile(a, (2, 1, 3)), X(2, 3))
case("hstack_vstack", lambda lib, a, b: lib.vstack([lib.hstack([a, b]), lib.hstack([b, a])]), X(2, 3), X(2, 3))
case("vstack_1d", lambda lib, a, b: lib.vstack([a, b]), X(4), X(4))
case("ravel", lambda lib, a: a.permute(1, 0).ravel(), X(3, 4))
case("addmm", lambda lib, c, a, b: lib.addmm(c, a, b, beta=0.5, alpha=2.0), X(5), X(3, 4), X(4, 5))
case("logaddexp", lambda lib, a, b: lib.logaddexp(a * 30, b), X(3, 4), X(3, 4))
case("diag_from_vector", lambda lib, a: lib.diag(a, 1), X(4))
case("diag_of_matrix", lambda lib, a: lib.diag(a, -1), X(4, 3))
case("count_nonzero", lambda lib, a: lib.count_nonzero(a, 1), X(3, 4, dtype="int64", domain=("int", -1, 2)),
     grad=False)
case("isclose", lambda lib, a, b: lib.isclose(a, a + b * 1e-6, rtol=1e-5, atol=1e-7), X(3, 4), X(3, 4), grad=False)
case("nan_to_num", lambda lib, a: lib.nan_to_num(lib.log(a), nan=0.5, neginf=-7.0), X(3, 4))

# ---------------------------------------------------------------------------------------------
# addcmul and addcdiv: broadcast three ways, PyTorch's promotion of the three tensors, `value`
# converted to the result dtype, and the in-place forms

for _dtype in FLOATS:
    case(
        f"addcmul_{_dtype}",
        lambda lib, a, b, c: lib.addcmul(a, b, c, value=0.5),
        X(3, 4, dtype=_dtype),
        X(4, dtype=_dtype),
        X(3, 1, dtype=_dtype),
    )
    case(
        f"addcdiv_{_dtype}",
        lambda lib, a, b, c: a.addcdiv(b, c, value=-2),
        X(3, 4, dtype=_dtype),
        X(3, 4, dtype=_dtype),
        X(4, dtype=_dtype, domain="nonzero"),
    )
case("addcmul_default_value", lambda lib, a, b, c: a.addcmul(b, c), X(2, 1, 4), X(3, 1), X(4))
case(
    "addcmul_int64_float_value_truncates",
    lambda lib, a, b, c: lib.addcmul(a, b, c, value=2.5),
    X(3, 4, dtype="int64", domain=("int", -5, 5)),
    X(3, 4, dtype="int64", domain=("int", -5, 5)),
    X(4, dtype="int64", domain=("int", -5, 5)),
    grad=False,
)
case(
    "addcmul_promotes_int_half_and_0d_double",
    lambda lib, a, b, c: lib.addcmul(a, b, c),
    X(3, 4, dtype="int32", domain=("int", -5, 5)),
    X(3, 4, dtype="float16"),
    X(dtype="float64"),
)
case(
    "addcdiv_int_by_float",  # (int / float: PyTorch's backward of float / int fails to cast its gradient)
    lambda lib, a, b, c: lib.addcdiv(a, b, c, value=0.25),
    X(3, 4, dtype="int64", domain=("int", -5, 5)),
    X(3, 4, dtype="int32", domain=("int", -5, 5)),
    X(3, 4, domain="nonzero"),
)
case("inplace_addcmul_", _inplace("addcmul_", value=0.5), X(3, 4), X(3, 4), X(4), tags=("inplace",))
case("inplace_addcdiv_", _inplace("addcdiv_", value=2), X(3, 4), X(3, 1), X(3, 4, domain="nonzero"),
     tags=("inplace",))

# ---------------------------------------------------------------------------------------------
# max pooling over ties: PyTorch's gradient goes to each window's first maximum (row-major), and to a
# position once per window whose first maximum it is

for _dtype in ("float32", "bfloat16"):
    case(
        f"max_pool2d_ties_k2s2_{_dtype}",
        lambda lib, x: lib.nn.functional.max_pool2d(x, 2, 2),
        X(2, 3, 6, 8, dtype=_dtype, domain=("int", 0, 3)),
    )
    case(
        f"max_pool2d_ties_k3s1_{_dtype}",
        lambda lib, x: lib.nn.functional.max_pool2d(x, 3, 1),
        X(2, 3, 7, 6, dtype=_dtype, domain=("int", 0, 2)),
    )
case(
    "max_pool2d_ties_k3s2_padded_ceil",
    lambda lib, x: lib.nn.functional.max_pool2d(x, 3, 2, padding=1, ceil_mode=True),
    X(3, 8, 7, domain=("int", 0, 2)),
)

"""Symbolic sizes: a dim that may change between calls, traced as an expression over size symbols.

A dynamic dim of a compiled function's argument becomes a symbol (`s0`, `s1`, ...) for its trace:
the traced tensor's shape holds a `SymInt` there, an int (its value in this call, the "hint") that
also carries its `Expr`. Arithmetic on SymInts (`T * 2`, `C // n_head`, `B * T`) gives SymInts, so
the shapes and the params the trace records (a reshape's shape, a slice's bounds) are expressions,
and the graph is valid for every value of its symbols. Where Python must decide on a size (a
comparison, `bool`, an `if`), the answer for this call's sizes is taken and recorded as a guard
(`ShapeEnv.guards`): the program applies only to calls for which every guard answers the same.
Where a size must become a plain number (`float(T)`, `T ** 0.5`, a numpy call through `__index__`
that the trace cannot see), it is specialized: a guard `s == hint`, recorded where the SymInt can
see it; a use it cannot see is caught by the compiler's check of a symbolic trace against a
concrete one (see `jitorch.compiler.api`).

As in PyTorch: sizes 0 and 1 are never made symbols (each is its own program: a broadcast depends
on them), and argument dims of equal size share one symbol, with a guard that they stay equal
("duck sizing": most equal dims are equal by construction, as a batch dim shared by inputs and
targets).
"""

from __future__ import annotations

import contextlib
import math
import operator
import threading
from collections.abc import Callable
from dataclasses import dataclass

# ---------------------------------------------------------------------------------------------
# expressions: integer polynomials over symbols and floor-division/modulo atoms


class Expr:
    """An integer polynomial: a sum of `coefficient * atom * atom ...` terms, kept in one canonical
    order so equal expressions are equal objects. An atom is a symbol's name (str), or
    ("//", Expr, d) / ("%", Expr, d) for a floor division or remainder by a positive int that does
    not simplify."""

    __slots__ = ("terms", "_hash")

    def __init__(self, terms: dict[tuple, int]) -> None:
        self.terms = tuple(sorted(((m, c) for m, c in terms.items() if c), key=_term_order))
        self._hash = hash(self.terms)

    @staticmethod
    def symbol(name: str) -> Expr:
        return Expr({(name,): 1})

    @staticmethod
    def constant(value: int) -> Expr:
        return Expr({(): int(value)})

    def is_constant(self) -> bool:
        return all(not m for m, _ in self.terms)

    def constant_value(self) -> int:
        return sum(c for m, c in self.terms if not m)

    def symbols(self) -> set[str]:
        found: set[str] = set()
        for monomial, _ in self.terms:
            for atom in monomial:
                found.update((atom,) if isinstance(atom, str) else atom[1].symbols())
        return found

    def __add__(self, other: Expr) -> Expr:
        terms = dict(self.terms)
        for m, c in other.terms:
            terms[m] = terms.get(m, 0) + c
        return Expr(terms)

    def __neg__(self) -> Expr:
        return Expr({m: -c for m, c in self.terms})

    def __sub__(self, other: Expr) -> Expr:
        return self + (-other)

    def __mul__(self, other: Expr) -> Expr:
        terms: dict[tuple, int] = {}
        for m1, c1 in self.terms:
            for m2, c2 in other.terms:
                m = tuple(sorted(m1 + m2, key=_atom_order))
                terms[m] = terms.get(m, 0) + c1 * c2
        return Expr(terms)

    def exact_quotient(self, divisor: Expr) -> Expr | None:
        """self / divisor where `divisor` is one term that divides every term of self exactly; else None."""
        if len(divisor.terms) != 1:
            return None
        (atoms, c), = divisor.terms
        terms: dict[tuple, int] = {}
        for monomial, coefficient in self.terms:
            rest = list(monomial)
            for atom in atoms:
                if atom not in rest:
                    return None
                rest.remove(atom)
            if coefficient % c:
                return None
            terms[tuple(rest)] = terms.get(tuple(rest), 0) + coefficient // c
        return Expr(terms)

    def minimum(self) -> int | None:
        """The least value over sizes of at least 2 where that is at 2 (every coefficient
        non-negative, no division): None where it can't tell."""
        if any(c < 0 and m for m, c in self.terms) or any(not isinstance(a, str) for m, _ in self.terms for a in m):
            return None
        return sum(c * 2 ** len(m) for m, c in self.terms)

    def floordiv(self, d: int) -> Expr:
        if d == 1:
            return self
        if all(c % d == 0 for _, c in self.terms):
            return Expr({m: c // d for m, c in self.terms})
        return Expr({(("//", self, d),): 1})

    def mod(self, d: int) -> Expr:
        if d == 1 or all(c % d == 0 for _, c in self.terms):
            return Expr.constant(0)
        return Expr({(("%", self, d),): 1})

    def evaluate(self, env: dict[str, int]) -> int:
        """The value for these symbol values."""
        total = 0
        for monomial, c in self.terms:
            for atom in monomial:
                c *= env[atom] if isinstance(atom, str) else _ATOM_OPS[atom[0]](atom[1].evaluate(env), atom[2])
            total += c
        return total

    def __eq__(self, other) -> bool:
        return isinstance(other, Expr) and self.terms == other.terms

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        if not self.terms:
            return "0"
        parts = []
        for monomial, c in self.terms:
            atoms = [a if isinstance(a, str) else f"({_grouped(a[1])}{a[0]}{a[2]})" for a in monomial]
            if not atoms:
                parts.append(str(c))
            elif c == 1:
                parts.append("*".join(atoms))
            elif c == -1:
                parts.append("-" + "*".join(atoms))
            else:
                parts.append(f"{c}*" + "*".join(atoms))
        return " + ".join(parts).replace("+ -", "- ")

    __repr__ = __str__


_ATOM_OPS = {"//": operator.floordiv, "%": operator.mod}


def _grouped(expr: Expr) -> str:
    return f"({expr})" if len(expr.terms) > 1 else str(expr)


def _atom_order(atom) -> tuple:
    return (0, atom) if isinstance(atom, str) else (1, atom[0], str(atom[1]), atom[2])


def _term_order(term: tuple) -> tuple:
    monomial, _ = term
    return (-len(monomial), [_atom_order(a) for a in monomial])


# ---------------------------------------------------------------------------------------------
# SymInt: an int of this call that knows its expression


class SymInt(int):
    """A size of this trace (the int value: its hint) and the expression it stands for.

    Arithmetic with ints and SymInts stays symbolic; comparisons answer for this call and record a
    guard; `float()`, `**` and true division specialize (a guard that the expression keeps its value).
    Uses Python makes through `__index__` (numpy, `range`, list indexing) read the hint unseen:
    the compiler's concrete check catches what they bake in."""

    def __new__(cls, hint: int, expr: Expr) -> SymInt:
        self = super().__new__(cls, hint)
        self.expr = expr
        return self

    @property
    def hint(self) -> int:
        return int.__int__(self)

    def __repr__(self) -> str:
        return str(self.expr)

    __str__ = int.__repr__  # (f-strings and messages show the size of this call)

    def __hash__(self) -> int:
        return int.__hash__(self)

    def __reduce__(self):
        return (int, (self.hint,))

    # arithmetic ------------------------------------------------------------------------------
    def __add__(self, other):
        return _binary(self, other, operator.add, Expr.__add__)

    def __radd__(self, other):
        return _binary(other, self, operator.add, Expr.__add__)

    def __sub__(self, other):
        return _binary(self, other, operator.sub, Expr.__sub__)

    def __rsub__(self, other):
        return _binary(other, self, operator.sub, Expr.__sub__)

    def __mul__(self, other):
        return _binary(self, other, operator.mul, Expr.__mul__)

    def __rmul__(self, other):
        return _binary(other, self, operator.mul, Expr.__mul__)

    def __neg__(self):
        return make(-self.hint, -self.expr)

    def __pos__(self):
        return self

    def __floordiv__(self, other):
        if isinstance(other, int) and not isinstance(other, SymInt) and other > 0:
            return make(self.hint // other, self.expr.floordiv(other))
        quotient = _exact(self, other)
        if quotient is not None:
            return make(self.hint // hint_of(other), quotient)
        return specialize(self) // specialize(other)

    def __rfloordiv__(self, other):
        return specialize(other) // specialize(self)

    def __mod__(self, other):
        if isinstance(other, int) and not isinstance(other, SymInt) and other > 0:
            return make(self.hint % other, self.expr.mod(other))
        if _exact(self, other) is not None:
            return 0
        return specialize(self) % specialize(other)

    def __rmod__(self, other):
        return specialize(other) % specialize(self)

    def __truediv__(self, other):
        return specialize(self) / specialize(other)

    def __rtruediv__(self, other):
        return specialize(other) / specialize(self)

    def __pow__(self, other, modulo=None):
        return pow(specialize(self), specialize(other), modulo)

    def __rpow__(self, other):
        return pow(specialize(other), specialize(self))

    def __float__(self) -> float:
        return float(specialize(self))

    def __int__(self) -> int:
        return specialize(self)

    def __index__(self) -> int:  # (numpy, range(), list indexing: the size becomes a constant, guarded)
        return specialize(self)

    def __abs__(self):
        return self if self.hint >= 0 else -self

    # decisions -------------------------------------------------------------------------------
    def __eq__(self, other):
        return _compare(self, other, "==")

    def __ne__(self, other):
        return _compare(self, other, "!=")

    def __lt__(self, other):
        return _compare(self, other, "<")

    def __le__(self, other):
        return _compare(self, other, "<=")

    def __gt__(self, other):
        return _compare(self, other, ">")

    def __ge__(self, other):
        return _compare(self, other, ">=")

    def __bool__(self) -> bool:
        return _compare(self, 0, "!=")


def make(hint: int, expr: Expr) -> int:
    """A SymInt, or a plain int where the expression is a constant."""
    return expr.constant_value() if expr.is_constant() else SymInt(hint, expr)


def _exact(a: SymInt, b) -> Expr | None:
    """a / b where b (a SymInt) is one term dividing a's expression exactly (B*T*C / (B*T))."""
    return a.expr.exact_quotient(b.expr) if isinstance(b, SymInt) else None


def hint_of(value):
    """A size's value in the traced call, without a guard (the trace's own bookkeeping: buffers of
    that size stand in for the traced tensors); anything else as it is."""
    return int.__int__(value) if isinstance(value, SymInt) else value


def hints(shape: tuple) -> tuple[int, ...]:
    return tuple(int.__int__(d) if isinstance(d, SymInt) else d for d in shape)


def same_sizes(a: tuple, b: tuple) -> bool:
    """Whether two shapes are the same expressions (no guard: bookkeeping, such as whether a
    gradient needs reducing to its input's shape, asks this)."""
    # (plain ints compare as ints: this runs on every gradient of an eager backward, and an Expr per
    # dim there cost more than the rest of the check)
    return len(a) == len(b) and all(
        x is y or (x == y if type(x) is int and type(y) is int else expr_of(x) == expr_of(y)) for x, y in zip(a, b))


def expr_of(value) -> Expr | None:
    """A size's expression (a constant's for an int); None for anything else."""
    if isinstance(value, SymInt):
        return value.expr
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return Expr.constant(value)
    return None


def _binary(a, b, op: Callable, on_exprs: Callable):
    ea, eb = expr_of(a), expr_of(b)
    if ea is None or eb is None:  # a float, say: the size's value in this call, specialized
        return op(specialize(a), specialize(b))
    return make(op(hint_of(a), hint_of(b)), on_exprs(ea, eb))


_COMPARE = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
            ">=": operator.ge}


def _compare(a, b, op: str) -> bool:
    ea, eb = expr_of(a), expr_of(b)
    if eb is None:
        if isinstance(b, float):
            eb = None
        else:
            return NotImplemented
    env = _active.env
    if env is None and _active.strict:
        if eb is None or op not in ("==", "!="):
            raise SizeEscape(f"a decision on {ea} {op} {b!r}")
        return (ea == eb) == (op == "==")
    answer = _COMPARE[op](hint_of(a), hint_of(b))
    if env is not None and eb is not None and ea != eb:
        env.guard(ea, op, eb, answer)
    elif env is not None and eb is None:
        env.guard(ea, "==", Expr.constant(hint_of(a)), True)  # (against a float: the size itself)
    return answer


def specialize(value):
    """`value` as a plain number: a SymInt's value in this call, guarded to stay so (inside
    `strict()`, a SizeEscape instead: nothing there may turn a size into a number)."""
    if isinstance(value, SymInt):
        if _active.env is not None:
            _active.env.guard(value.expr, "==", Expr.constant(value.hint), True)
        elif _active.strict:
            raise SizeEscape(f"the size {value.expr} was needed as a number")
        return value.hint
    return value


class SizeEscape(Exception):
    """Inside `strict()`: code treated a symbolic size as a number (or decided on its magnitude)."""


@contextlib.contextmanager
def strict():
    """A block that transforms a symbolic graph (the compiler's passes): in it sizes compare by
    expression (`s0 == s0`, never `s0 == 32` because this call had 32), and any use as a number or
    a decision on magnitude raises SizeEscape (the caller then works on specialized graphs)."""
    before, _active.strict = _active.strict, True
    try:
        yield
    finally:
        _active.strict = before


def concrete(value, env: dict[str, int]):
    """`value` (a param: an int, a SymInt, a tuple or slice of them, anything else) with every SymInt
    evaluated for the symbol values `env`."""
    if isinstance(value, SymInt):
        return value.expr.evaluate(env)
    if type(value) is tuple:
        return tuple(concrete(v, env) for v in value)
    if type(value) is slice:
        return slice(concrete(value.start, env), concrete(value.stop, env), concrete(value.step, env))
    return value


def is_symbolic(value) -> bool:
    """Whether a param or shape holds a SymInt anywhere."""
    if isinstance(value, SymInt):
        return True
    if type(value) is tuple:
        return any(map(is_symbolic, value))
    if type(value) is slice:
        return is_symbolic((value.start, value.stop, value.step))
    return False


# ---------------------------------------------------------------------------------------------
# the shape environment of one trace


@dataclass(frozen=True)
class Guard:
    """`lhs op rhs` answered `answer` for the traced call; a call for which it answers otherwise needs
    another program."""

    lhs: Expr
    op: str
    rhs: Expr
    answer: bool

    def holds(self, env: dict[str, int]) -> bool:
        return _COMPARE[self.op](self.lhs.evaluate(env), self.rhs.evaluate(env)) == self.answer

    def show(self, names: Callable[[str], str] = str) -> str:
        op = self.op if self.answer else _NEGATED[self.op]
        return f"{_named(self.lhs, names)} {op} {_named(self.rhs, names)}"


_NEGATED = {"==": "!=", "!=": "==", "<": ">=", "<=": ">", ">": "<=", ">=": "<"}


def _named(expr: Expr, names: Callable[[str], str]) -> str:
    text = str(expr)
    for symbol in sorted(expr.symbols(), key=len, reverse=True):
        text = text.replace(symbol, names(symbol))
    return text


@dataclass(frozen=True)
class SymbolSource:
    """Where a symbol's value is read at call time: argument leaf `leaf`'s dim `dim`."""

    leaf: int
    dim: int
    label: str  # "x.size(0)"
    size: int | None = None  # a size 0 or 1 the trace took as it was (not a symbol)


class _Active(threading.local):
    env = None  # the ShapeEnv of the trace running in this thread, or None
    strict = False  # inside `strict()`


_active = _Active()


class ShapeEnv:
    """The symbols of one trace (each with every argument dim it was read from) and the guards the
    trace recorded on them; entered (`with env:`) while the trace runs, so that decisions on sizes
    made then are recorded."""

    def __init__(self) -> None:
        self.sources: dict[str, list[SymbolSource]] = {}  # symbol -> every argument dim it stands for
        self.fixed: list[SymbolSource] = []  # dynamic dims of size 0 or 1: constants of the trace
        self.hints: dict[str, int] = {}
        self._by_hint: dict[int, str] = {}
        self.guards: list[Guard] = []
        self._seen: set[Guard] = set()

    def size(self, hint: int, leaf: int, dim: int, label: str) -> int:
        """The size of argument leaf `leaf`'s dim `dim` for the trace: a SymInt (a new symbol, or the
        one of an equal dim), or the int itself for 0 and 1."""
        if hint in (0, 1):
            self.fixed.append(SymbolSource(leaf, dim, label, hint))
            return hint
        name = self._by_hint.get(hint)
        if name is None:
            name = self._by_hint[hint] = f"s{len(self.hints)}"
            self.hints[name] = hint
            self.sources[name] = []
        self.sources[name].append(SymbolSource(leaf, dim, label))
        return SymInt(hint, Expr.symbol(name))

    def guard(self, lhs: Expr, op: str, rhs: Expr, answer: bool) -> None:
        if lhs.is_constant() and rhs.is_constant():
            return
        least = (lhs - rhs).minimum()  # (symbols are sizes of 2 or more: `T != -1`, `T > 0` always hold)
        if least is not None and least > 0 and answer == (op in ("!=", ">", ">=")):
            return
        least = (rhs - lhs).minimum()
        if least is not None and least > 0 and answer == (op in ("!=", "<", "<=")):
            return
        guard = Guard(lhs, op, rhs, answer)
        if guard not in self._seen:
            self._seen.add(guard)
            self.guards.append(guard)

    def label(self, symbol: str) -> str:
        return self.sources[symbol][0].label

    def bind(self, shapes: list[tuple[int, ...] | None]) -> tuple[dict[str, int] | None, str | None]:
        """The symbol values of a call whose argument leaves have `shapes` (None for a non-tensor),
        and None; or None and why the trace does not apply (two dims that shared a symbol differ, or
        a guard answers otherwise), in words that name the arguments."""
        env: dict[str, int] = {}
        for fixed in self.fixed:
            now = shapes[fixed.leaf][fixed.dim]
            if now != fixed.size:
                return None, (f"{fixed.label} is {now}, traced as {fixed.size}: sizes 0 and 1 get programs of "
                              "their own")
        for name, sources in self.sources.items():
            first = sources[0]
            env[name] = value = shapes[first.leaf][first.dim]
            for other in sources[1:]:
                now = shapes[other.leaf][other.dim]
                if now != value:
                    return None, (f"{first.label} == {other.label} no longer holds ({value} != {now}): the "
                                  "trace assumed these sizes equal")
            if value in (0, 1):
                return None, f"{first.label} is {value}: sizes 0 and 1 get programs of their own"
        for guard in self.guards:
            if not guard.holds(env):
                symbols = sorted(guard.lhs.symbols() | guard.rhs.symbols())
                shown = ", ".join(f"{self.label(s)}={env[s]}" for s in symbols)
                return None, f"the trace assumed {guard.show(self.label)}, which fails for {shown}"
        return env, None

    def describe(self) -> list[str]:
        """The symbols (where each is read, its value when traced) and the guards, in words."""
        lines = [f"{name} = {' = '.join(s.label for s in sources)} (traced at {self.hints[name]})"
                 for name, sources in self.sources.items()]
        lines += [f"assumes {guard.show()}" for guard in self.guards]
        return lines

    def __enter__(self) -> ShapeEnv:
        _active.env = self
        return self

    def __exit__(self, *exc) -> None:
        _active.env = None


def prod(sizes) -> int:
    """The product of sizes, symbolic where they are."""
    return math.prod(sizes, start=1)

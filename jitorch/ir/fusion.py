"""Fusion: group a graph's pointwise nodes, and the row reductions between them, into kernels.

A kernel is a set of pointwise nodes with one output shape. Its external inputs may have any shape
that broadcasts to it (a bias, a row statistic, a scalar); values made inside it never touch
memory unless something outside the kernel (or the graph's output) reads them.

A row kernel also holds reductions over the last dim (keepdim=True) of its shape S, and pointwise
nodes of their row shape R = S[:-1] + (1,): softmax (max, exp, sum, divide), layer_norm (mean,
variance, normalize) or cross_entropy's log-sum-exp is one kernel, and a row statistic never
leaves it unless something outside reads it. The backend runs it row by row, one pass over the row
per chain of reductions (`level`).

What a backend gets is a `KernelDesc` (`describe`): the kernel's nodes, its loop nest after
collapsing dims, each input's broadcast pattern along it, and a structure key under which kernels
that differ only in sizes share one compiled function. The backend answers the capability
questions (`can_fuse`, `worth_a_kernel`) that `partition` asks; it knows nothing of this grouping.

The grouping is greedy in execution order, with the few newest kernels of each shape open. A node
joins the newest open kernel of its shape that it reads something of (a value the kernel makes or
reads) when each of its inputs is either made inside that kernel or defined before the kernel's
first node. That second rule is what makes a kernel safe to run as a unit at the position of its
first node: everything it reads exists by then, and nothing that runs in between (a matmul, a
reduction) can feed it. Where two open chains of one shape meet, the newer kernel merges into the
older one when the same rule holds for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..primitives import PRIMS, PrimKind
from .graph import Graph, Node, Value, format_node
from .layouts import c_strides, view_layout

MAX_NODES_PER_KERNEL = 96  # a bound on one kernel's compile time, not on its speed
MAX_OPEN_PER_SHAPE = 4  # kernels a node may still join; older ones are closed (their values would
# otherwise be computed early and held in memory until a much later reader)


@dataclass(eq=False)  # kernels are compared by identity (`in`, `remove`), never by their fields
class Kernel:
    """Pointwise nodes run as one loop nest over `shape`."""

    shape: tuple[int, ...]
    start: int  # index of its first node in the graph: where it runs
    nodes: list[Node] = field(default_factory=list)
    inputs: list[Value] = field(default_factory=list)  # read from memory
    outputs: list[Value] = field(default_factory=list)  # written to memory
    reads: set[int] = field(default_factory=set)  # ids of the values its nodes read
    rows: bool = False  # holds reductions over the last dim: a row kernel
    columns: int = 0  # holds sums over its first `columns` dims (a bias gradient): a column kernel

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.shape[:-1] + (1,)

    def in_place_maker(self, v: Value) -> tuple[Kernel, set[int]] | None:
        """The kernel computing output `v` element for element from what it reads, where writing `v`
        over one of its inputs could be safe (a pointwise kernel; a row kernel rereads its row, a
        column kernel its rows), and the ids of values the rest of its launch reads (none here)."""
        return None if self.rows or self.columns else (self, set())

    def levels(self) -> dict[int, int]:
        """Value id -> the number of the kernel's reductions on its longest path from the kernel's
        inputs: the pass over the row in which a row kernel can compute it (inputs are level 0)."""
        level: dict[int, int] = {}
        for node in self.nodes:
            deepest = max((level.get(v.id, 0) for v in node.inputs), default=0)
            level[node.out.id] = deepest + 1 if is_row_reduction(node) else deepest
        return level

    def format(self) -> str:
        head = (f"kernel {self.name()} over {list(self.shape)}: reads "
                f"{' '.join(v.name for v in self.inputs) or '-'}, writes {' '.join(v.name for v in self.outputs)}")
        return "\n".join([head] + ["    " + format_node(n) for n in self.nodes])

    def name(self) -> str:
        ops = [n.op for n in self.nodes]
        core = "_".join(dict.fromkeys(ops))[:48]
        return f"fused_{core}_{'x'.join(map(str, self.shape)) or 'scalar'}"


@dataclass(eq=False)
class KernelDesc:
    """A kernel as a backend renders it: `loop_shape` is the kernel's shape with adjacent dims
    merged where every input is full along both or broadcast along both; `broadcast[k][d]` says
    input k is broadcast along loop dim d; `dim_groups[d]` lists the kernel dims loop dim d covers
    (an input is viewed in the loop shape through them). `key` is what the code depends on (ops,
    params, wiring, dtypes, broadcast pattern) and not sizes or value ids."""

    kernel: Kernel
    loop_shape: tuple[int, ...]
    broadcast: list[tuple[bool, ...]]
    dim_groups: tuple[tuple[int, ...], ...]
    key: tuple

    @property
    def name(self) -> str:
        return self.kernel.name()

    @property
    def reduced_loop_dims(self) -> int:
        """A column kernel's loop dims that its sums run over (the leading ones)."""
        return sum(1 for group in self.dim_groups if group[0] < self.kernel.columns)

    def view_shape(self, v: Value) -> tuple[int, ...]:
        """The shape in which input `v` is read: its dims merged as the loop's are."""
        padded = _padded(v, len(self.kernel.shape))
        return tuple(math.prod(padded[d] for d in group) for group in self.dim_groups)


def describe(kernel: Kernel) -> KernelDesc:
    loop_shape, broadcast, dim_groups = _collapse(kernel)
    return KernelDesc(kernel, loop_shape, broadcast, dim_groups, _structure(kernel, broadcast))


def _padded(v: Value, ndim: int) -> tuple[int, ...]:
    return (1,) * (ndim - len(v.shape)) + v.shape


def _collapse(kernel: Kernel) -> tuple[tuple[int, ...], list[tuple[bool, ...]], tuple[tuple[int, ...], ...]]:
    """The kernel's loop shape after merging dims, each input's broadcast flags along it, and the
    groups of the kernel's dims that each loop dim covers. A row kernel's last dim (the reduced
    one, longer than 1) stays a loop dim of its own."""
    shape = kernel.shape
    ndim = len(shape)
    padded = [_padded(v, ndim) for v in kernel.inputs]
    # inputs that are permutes or slices of another value: their strides (in elements), so that
    # dims they do not lay out one after the other stay apart and the kernel reads them in place
    strided = [found for found in map(view_strides, kernel.inputs) if found is not None and len(found) == ndim]

    def flags(d):
        return tuple(p[d] == 1 for p in padded)

    def adjacent(a: int, b: int) -> bool:  # dims a < b (b the next one longer than 1) merge in each strided input
        return all(st[a] == st[b] * shape[b] for st in strided)

    groups: list[list[int]] = []
    for d in (d for d in range(ndim) if shape[d] != 1):
        if (groups and flags(groups[-1][-1]) == flags(d) and not (kernel.rows and d == ndim - 1)
                and not (kernel.columns and d == kernel.columns and groups[-1][-1] < d)
                and adjacent(groups[-1][-1], d)):
            groups[-1].append(d)
        else:
            groups.append([d])
    loop_shape = tuple(math.prod(shape[d] for d in g) for g in groups)
    broadcast = [tuple(p[g[0]] == 1 for g in groups) for p in padded]
    return loop_shape, broadcast, tuple(tuple(g) for g in groups)


def view_strides(v: Value) -> tuple[int, ...] | None:
    """The strides, in elements, that `v` has when it is a permute, or a slice with steps of one,
    of a value laid out C-contiguously (as the eager kernels make these views); None for anything
    else, or where they are C-contiguous anyway."""
    node = v.node
    if node is None or v.symbolic or node.op not in ("permute", "getitem") or node.inputs[0].symbolic:
        return None
    if node.op == "getitem" and (len(node.inputs) > 1 or any(
            type(item) is not tuple or item[0] != "slice" or item[3] not in (None, 1) for item in node.params["key"])):
        return None
    source = node.inputs[0].shape
    found = view_layout(source, c_strides(source), _ELEMENT, node.op, tuple(sorted(node.params.items())))
    if found is None:
        return None
    strides = found[2]
    return None if all(a == b or n == 1 for a, b, n in zip(strides, c_strides(v.shape), v.shape)) else strides


_ELEMENT = np.dtype(np.uint8)  # (layouts in elements: a one-byte stand-in)


ZERO, POSITIONS = "zero", "positions"


def constant_traits(v: Value, row_len: int) -> tuple[str, ...]:
    """What a renderer may read off the values of input `v` where it is a constant of the graph:
    ZERO (one element, 0) and POSITIONS (integers 0, 1, ..., row_len - 1 along the last dim:
    cross-entropy's one-hot mask compares the targets with them). Code built on these is code for
    these values only, so they are part of a kernel's key."""
    if v.node is None or v.node.op != "const":
        return ()
    a = v.node.params["value"].array
    traits = []
    if a.size == 1 and a.reshape(()) == 0:
        traits.append(ZERO)
    if (a.dtype.kind in "iu" and row_len > 0 and a.size == row_len and a.shape[-1:] == (row_len,)
            and np.array_equal(a.reshape(-1), np.arange(row_len))):
        traits.append(POSITIONS)
    return tuple(traits)


def _structure(kernel: Kernel, broadcast: list[tuple[bool, ...]]) -> tuple:
    row_len = kernel.shape[-1] if kernel.shape else 0
    traits = tuple(constant_traits(v, row_len) for v in kernel.inputs)
    local = {v.id: i for i, v in enumerate(kernel.inputs)}
    nodes = []
    for node in kernel.nodes:
        nodes.append((node.op, node.params_key(), tuple(local[v.id] for v in node.inputs), node.out.dtype.name))
        local[node.out.id] = len(local)
    return (tuple(v.dtype.name for v in kernel.inputs), tuple(nodes), tuple(local[v.id] for v in kernel.outputs),
            tuple(broadcast), kernel.rows, kernel.columns, traits)


# ---------------------------------------------------------------------------------------------
# horizontal fusion: kernels of one structure over different sizes, run as one launch


@dataclass(eq=False)
class KernelGroup:
    """Pointwise kernels with the same code but for their sizes, none reading another's output,
    run as one launch where the last of them ran: an optimizer's update of every parameter. Each
    member reads its inputs whole or as one number (its loop is flat), so a launch needs no more
    than each member's size and addresses. `inputs` and `outputs` are the members', in order."""

    members: list[Kernel]
    descs: list[KernelDesc]

    @property
    def inputs(self) -> list[Value]:
        return [v for k in self.members for v in k.inputs]

    @property
    def outputs(self) -> list[Value]:
        return [v for k in self.members for v in k.outputs]

    @property
    def nodes(self) -> list[Node]:
        return [n for k in self.members for n in k.nodes]

    def in_place_maker(self, v: Value) -> tuple[Kernel, set[int]]:
        """The member making `v`, and what the other members read: they run at once with it."""
        member = next(k for k in self.members if any(o.id == v.id for o in k.outputs))
        return member, {w.id for k in self.members if k is not member for w in k.inputs}

    def name(self) -> str:
        core = self.members[0].name().rsplit("_", 1)[0]
        return f"{core}_{len(self.members)}_tensors"

    def format(self) -> str:
        first = self.members[0].format().splitlines()
        sizes = ", ".join("x".join(map(str, k.shape)) or "scalar" for k in self.members)
        return "\n".join([f"group {self.name()}: {len(self.members)} kernels as one launch, over {sizes}; "
                          "the first:", *("    " + line for line in first)])


def groupable(desc: KernelDesc) -> bool:
    """Whether a kernel may join a group: pointwise, a flat loop (each input whole or one number),
    no random numbers (they are numbered by element within a kernel's own shape)."""
    kernel = desc.kernel
    return (not kernel.rows and not kernel.columns and len(desc.loop_shape) <= 1 and bool(kernel.outputs)
            and all(n.op != "random" for n in kernel.nodes))


def group_horizontally(order: list, descs: dict[int, KernelDesc]) -> list:
    """`order` (a `partition`'s) with kernels of one structure (`KernelDesc.key`) that `groupable`
    admits gathered into `KernelGroup`s, each run where its last member ran. A kernel joins the
    open group of its structure (or opens one); a group closes before anything reads one of its
    outputs (moved later, a member must still run before its readers), so no member reads another
    and every reader of a member's output runs after the group. A group of one stays a kernel.
    `descs`: id(kernel) -> its description."""
    open_groups: dict[tuple, list[Kernel]] = {}
    making: dict[int, tuple] = {}  # value id -> the structure key of the open group making it
    placed: dict[int, list[Kernel]] = {}  # id(last member) -> its closed group
    members_of: dict[int, list[Kernel]] = {}

    def close(key: tuple) -> None:
        group = open_groups.pop(key)
        placed[id(group[-1])] = group
        for k in group:
            members_of[id(k)] = group
            for v in k.outputs:
                making.pop(v.id, None)

    for item in order:
        for key in {making[v.id] for v in item.inputs if v.id in making}:
            close(key)
        desc = descs.get(id(item)) if isinstance(item, Kernel) else None
        if desc is not None and groupable(desc):
            open_groups.setdefault(desc.key, []).append(item)
            making.update((v.id, desc.key) for v in item.outputs)
    for key in list(open_groups):
        close(key)
    result = []
    for item in order:
        group = members_of.get(id(item)) if isinstance(item, Kernel) else None
        if group is None or len(group) == 1:
            result.append(item)
        elif id(item) in placed:
            result.append(KernelGroup(group, [descs[id(k)] for k in group]))
    return result


# ---------------------------------------------------------------------------------------------
# a matrix product and the pointwise kernel that alone reads it, as one kernel (an epilogue)


@dataclass(eq=False)
class MatmulEpilogue:
    """A 2-d `matmul` node whose product only `kernel` (pointwise, over the product's shape) reads:
    a backend may compute both in one kernel, the product tile by tile in registers, never written
    (a bias, an activation, a residual add, a cast). Runs where `kernel` ran. `inputs`: the product's
    two factors, then the kernel's other inputs; `outputs`: the kernel's."""

    matmul: Node
    kernel: Kernel
    desc: KernelDesc  # the kernel's, with the product among its inputs
    reshape: Node | None = None  # the product's leading dims restored (F.linear's 2-d product of a batch)

    @property
    def product(self) -> Value:
        """The product as the kernel reads it."""
        return (self.reshape or self.matmul).out

    @property
    def rows_and_columns(self) -> tuple[int, int]:
        """The product as a 2-d (rows, columns) matrix: its leading dims flattened into rows."""
        shape = self.product.shape
        return math.prod(shape[:-1]), shape[-1]

    @property
    def inputs(self) -> list[Value]:
        return [*self.matmul.inputs, *(v for v in self.kernel.inputs if v.id != self.product.id)]

    @property
    def outputs(self) -> list[Value]:
        return self.kernel.outputs

    @property
    def nodes(self) -> list[Node]:
        return [self.matmul, *([self.reshape] if self.reshape else []), *self.kernel.nodes]

    def in_place_maker(self, v: Value) -> None:
        """None: a product's tiles read whole rows and columns of its factors."""
        return None

    def name(self) -> str:
        return "matmul_" + self.kernel.name().removeprefix("fused_")

    def format(self) -> str:
        return "\n".join([f"matmul with epilogue {self.name()}: " + format_node(self.matmul),
                          *self.kernel.format().splitlines()])


def epilogue_matmul(node: Node) -> bool:
    """A product a kernel may take in: of a factor with any leading dims (a batch of rows, as a
    Linear layer's input) by a 2-d one, of one dtype, float32, float16 or bfloat16 (accumulated in
    float32)."""
    return (node.op == "matmul" and len(node.inputs) == 2 and len(node.inputs[0].shape) >= 2
            and len(node.inputs[1].shape) == 2 and node.out.dtype.name in ("float32", "float16", "bfloat16")
            and all(v.dtype == node.out.dtype for v in node.inputs))


def _rows_and_columns(v: Value, shape: tuple[int, ...]) -> bool:
    """Whether `v` broadcasts to `shape` as a 2-d (rows, last dim) operand would: its leading dims
    all full or all 1 (a bias, a per-row value, a residual, a scalar)."""
    padded = _padded(v, len(shape))
    leading = [a == b for a, b in zip(padded[:-1], shape[:-1]) if b != 1]
    return (all(leading) or not any(leading)) and padded[-1] in (1, shape[-1])


def absorb_matmul_epilogues(graph: Graph, order: list, descs: dict[int, KernelDesc],
                            wanted: Callable[[Node], bool] = lambda node: True) -> list:
    """`order` with each product that `epilogue_matmul` admits and `wanted` (the backend's say) and
    only one pointwise kernel of its shape reads (nothing else, not the graph's outputs: a product
    saved for the backward stays a node) replaced, with that kernel, by a `MatmulEpilogue` where
    the kernel ran. The kernel's other inputs must read as 2-d operands (`_rows_and_columns`)."""
    readers: dict[int, list] = {}
    for item in order:
        for v in item.inputs:
            readers.setdefault(v.id, []).append(item)
    outputs = {v.id for v in graph.outputs}

    def only_reader(v: Value):
        found = {id(r): r for r in readers.get(v.id, [])}
        return None if len(found) != 1 or v.id in outputs else next(iter(found.values()))

    taken: dict[int, tuple[Node, Node | None]] = {}  # id(kernel) -> the product it takes in, and its reshape
    for item in order:
        if not (isinstance(item, Node) and epilogue_matmul(item) and wanted(item)):
            continue
        kernel, reshape = only_reader(item.out), None
        if isinstance(kernel, Node) and kernel.op == "reshape" and len(item.out.shape) == 2 \
                and kernel.out.shape[-1:] == item.out.shape[-1:]:  # (its leading dims restored)
            kernel, reshape = only_reader(kernel.out), kernel
        product = (reshape or item).out
        if (isinstance(kernel, Kernel) and not kernel.rows and not kernel.columns and kernel.shape == product.shape
                and id(kernel) not in taken and all(v.id != product.id for v in kernel.outputs)
                and all(_rows_and_columns(v, kernel.shape) for v in kernel.inputs)):
            taken[id(kernel)] = (item, reshape)
    absorbed = {id(n) for pair in taken.values() for n in pair if n is not None}
    return [MatmulEpilogue(taken[id(item)][0], item, descs[id(item)], taken[id(item)][1]) if id(item) in taken
            else item for item in order if id(item) not in absorbed]


def is_row_reduction(node: Node) -> bool:
    """A reduction a row kernel can hold: over the last dim (longer than 1), keeping it."""
    if not _is_reduce(node) or not node.inputs:
        return False
    shape = node.inputs[0].shape
    return (len(shape) >= 1 and shape[-1] > 1 and node.params.get("keepdim") is True
            and tuple(node.params.get("dims", ())) == (len(shape) - 1,))


def column_sum_dims(node: Node) -> int:
    """How many leading dims `node` sums over where it is a sum a column kernel can hold (over the
    first k dims of a float value, 0 < k < its ndim, keepdim either way: a bias gradient), else 0."""
    if node.op != "sum" or not node.inputs or node.inputs[0].dtype.name not in ("float32", "float64"):
        return 0
    shape, dims = node.inputs[0].shape, tuple(node.params.get("dims", ()))
    k = len(dims)
    return k if 0 < k < len(shape) and dims == tuple(range(k)) and node.out.dtype == node.inputs[0].dtype else 0


def partition(graph: Graph, fusible: Callable[[Node], bool], single_worth_it: Callable[[Kernel], bool] | None = None,
              column_sums: bool = False, scalars_together: bool = False,
              side_chains: bool = False) -> list[Node | Kernel]:
    """The graph's nodes in an order to run them, with fusible pointwise nodes grouped into kernels.
    A kernel of one node is returned as the plain node unless `single_worth_it` says otherwise (a
    backend may still run one large op faster than numpy, e.g. on several threads). With
    `column_sums`, a sum over leading dims (`column_sum_dims`) joins the open kernel that makes
    what it sums, which then writes the sums (a column kernel: nothing in it reads them). With
    `scalars_together`, single-element chains share a kernel even when they read nothing in common
    (an optimizer's bias corrections, one chain per parameter's step count): one launch for many,
    where a backend does not group kernels of one structure into one launch itself. With `side_chains`,
    small side chains that feed a large node run first too (`_early_order`)."""
    nodes = _early_order(graph, side_chains)
    position = {node.out.id: i for i, node in enumerate(nodes)}
    open_kernels: dict[tuple[int, ...], list[Kernel]] = {}  # per shape, the newest last
    kernel_of: dict[int, Kernel] = {}  # value id -> the kernel that makes it
    order: list[Node | Kernel] = []
    for i, node in enumerate(nodes):
        reduction = is_row_reduction(node)
        if column_sums and not reduction and _join_columns(node, open_kernels, kernel_of):
            continue
        if not fusible(node) or not reduction and _is_reduce(node):
            order.append(node)
            continue
        # a reduction joins a kernel over its input's shape; a pointwise node one over its own
        # shape, which for a row shape may be a row kernel (registered under both shapes)
        shape = node.inputs[0].shape if reduction else node.out.shape
        candidates = open_kernels.setdefault(shape, [])
        kernel = _merge_for(node, candidates, position, kernel_of, order, open_kernels)
        if kernel is None:
            joins = (k for k in reversed(candidates) if _can_join(node, k, position, kernel_of, scalars_together))
            kernel = next(joins, None)
        if kernel is None:
            kernel = Kernel(shape, i)
            candidates.append(kernel)
            del candidates[:-MAX_OPEN_PER_SHAPE]
            order.append(kernel)
        if reduction and not kernel.rows:
            kernel.rows = True
            rows = open_kernels.setdefault(kernel.row_shape, [])
            rows.append(kernel)
            del rows[:-MAX_OPEN_PER_SHAPE]
        kernel.nodes.append(node)
        kernel.reads.update(v.id for v in node.inputs)
        kernel_of[node.out.id] = kernel
    _wire(graph, [k for k in order if isinstance(k, Kernel)], kernel_of)
    _rematerialize(graph, order, kernel_of)
    single_worth_it = single_worth_it or (lambda kernel: False)
    return [k.nodes[0] if isinstance(k, Kernel) and len(k.nodes) == 1 and not single_worth_it(k) else k
            for k in order]


def _join_columns(node: Node, open_kernels: dict[tuple[int, ...], list[Kernel]], kernel_of: dict[int, Kernel]) -> bool:
    """Add column sum `node` to the open pointwise kernel that makes what it sums, where there is
    one (and the kernel sums over the same dims, if it sums already); whether it did."""
    k = column_sum_dims(node)
    if not k:
        return False
    kernel = kernel_of.get(node.inputs[0].id)
    if (kernel is None or kernel.rows or kernel.columns not in (0, k) or kernel.shape != node.inputs[0].shape
            or kernel not in open_kernels.get(kernel.shape, ()) or len(kernel.nodes) >= MAX_NODES_PER_KERNEL):
        return False
    kernel.columns = k
    kernel.nodes.append(node)
    kernel.reads.add(node.inputs[0].id)
    kernel_of[node.out.id] = kernel
    return True


def _merge_for(node: Node, candidates: list[Kernel], position: dict[int, int], kernel_of: dict[int, Kernel],
               order: list, open_kernels: dict[tuple[int, ...], list[Kernel]]) -> Kernel | None:
    """Where chains of one shape meet (an optimizer's update reads its moment chains and its decayed
    parameter; cross-entropy picks each row's target log-probability with a mask made from the
    targets): merge the open kernels that make `node`'s inputs into the oldest of them, when every
    input of the newer ones exists before the oldest starts, so that `node` can join it. A row
    kernel merges with kernels of its full shape (its pointwise nodes over the whole row join its
    passes over the row). Returns that kernel, or None (nothing merged)."""
    makers = sorted({id(k): k for v in node.inputs if (k := kernel_of.get(v.id)) in candidates}.values(),
                    key=lambda k: k.start)
    if len(makers) < 2 or any(k.rows and k.shape != node.out.shape or k.columns for k in makers):
        return None
    oldest, newer = makers[0], makers[1:]
    made = {n.out.id for k in makers for n in k.nodes}
    for k in newer:
        for v in (v for n in k.nodes for v in n.inputs):
            if v.id not in made and position.get(v.id, -1) >= oldest.start and not _is_const(v):
                return None
    if sum(len(k.nodes) for k in makers) >= MAX_NODES_PER_KERNEL:
        return None
    for k in newer:
        for n in k.nodes:
            kernel_of[n.out.id] = oldest
        oldest.nodes.extend(k.nodes)
        oldest.reads |= k.reads
        candidates.remove(k)
        order.remove(k)
        if k.rows:  # the merged kernel holds its reductions: it takes its place among the row-shape kernels
            rows = open_kernels.setdefault(k.row_shape, [])
            if k in rows:
                rows.remove(k)
            if not oldest.rows:
                oldest.rows = True
                rows.append(oldest)
    return oldest if _can_join(node, oldest, position, kernel_of) else None


def _is_const(v: Value) -> bool:
    return v.node is not None and v.node.op == "const"


def _is_reduce(node: Node) -> bool:
    return node.op != "const" and PRIMS[node.op].kind is PrimKind.REDUCE


# side chains this much smaller than the graph's largest value move to the front (`_early_order`)
SMALL_SIDE_FRACTION = 64
_MOVABLE_VIEWS = frozenset({"reshape", "permute", "expand"})


def _early_order(graph: Graph, side_chains: bool) -> list[Node]:
    """The graph's nodes with those that need only the graph's inputs moved to the front: the
    single-element ones, views (a reshape, permute or expand costs no pass over memory), and small
    side chains that feed something large (every value they read and make at most
    1/SMALL_SIDE_FRACTION of the graph's largest). An optimizer computes its bias corrections from 0-d
    step counters in the middle of each parameter's update, cross-entropy reshapes its targets after
    the log-softmax starts, and its backward's per-row scale (the targets' mask over the count of those
    not ignored) comes after the forward's loss; left there, each would cut a kernel in pieces (a
    kernel can only read values that exist before it starts): moved, the backward of cross-entropy
    joins its forward's row kernel, one read of the logits for both. A small chain that feeds only
    small ones (an optimizer's moment decay, before the gradient's term is added) stays: moved, it would
    be a kernel of its own, cut from the chain it belongs to. Without `side_chains`, only the
    single-element nodes and views move."""
    movable = lambda node: math.prod(node.out.shape) <= 1 or node.op in _MOVABLE_VIEWS
    if not side_chains:
        return _early_first(graph, _early_nodes(graph, movable))
    small = max((math.prod(n.out.shape) for n in graph.nodes), default=0) // SMALL_SIDE_FRACTION
    is_small = lambda node: max(math.prod(v.shape) for v in (node.out, *node.inputs)) <= small
    side = _early_nodes(graph, lambda node: movable(node) or is_small(node))
    # the side nodes whose values reach (through other early ones) a node that is not early and large
    feeds_large: set[int] = set()
    for node in reversed(graph.nodes):
        if node.out.id in side and node.out.id not in feeds_large:
            continue
        if node.out.id in side or math.prod(node.out.shape) > small:
            feeds_large.update(v.id for v in node.inputs)
    early = _early_nodes(graph, lambda node: movable(node) or is_small(node) and node.out.id in feeds_large)
    return _early_first(graph, early)


def _early_first(graph: Graph, early: set[int]) -> list[Node]:
    return [n for n in graph.nodes if n.out.id in early] + [n for n in graph.nodes if n.out.id not in early]


def _early_nodes(graph: Graph, may_move: Callable[[Node], bool]) -> set[int]:
    """The ids of the values of nodes that `may_move` allows and that read only the graph's inputs,
    constants and each other."""
    early: set[int] = {inp.value.id for inp in graph.inputs}
    moved: set[int] = set()
    for node in graph.nodes:
        if may_move(node) and all(v.id in early or _is_const(v) for v in node.inputs):
            early.add(node.out.id)
            moved.add(node.out.id)
    return moved


def _can_join(node: Node, kernel: Kernel, position: dict[int, int], kernel_of: dict[int, Kernel],
              scalars_together: bool = False) -> bool:
    scalars = scalars_together and not kernel.shape and not kernel.rows and len(kernel.nodes) < MAX_NODES_PER_KERNEL
    if not (scalars or _related(node, kernel, kernel_of)):
        return False
    if kernel.columns and (_is_reduce(node) or any(kernel_of.get(v.id) is kernel and v.shape != kernel.shape
                                                   for v in node.inputs)):
        return False  # (a column kernel's sums are complete only when it ends)
    for v in node.inputs:
        if kernel_of.get(v.id) is kernel or v.node is not None and v.node.op == "const":
            continue  # (constants exist before anything runs)
        if position.get(v.id, -1) >= kernel.start:  # (graph inputs have no position)
            return False  # made after the kernel starts, outside it: the kernel could not run first
    return True


def _related(node: Node, kernel: Kernel, kernel_of: dict[int, Kernel]) -> bool:
    """Whether `node` reads a value the kernel makes or reads (a constant doesn't count). Chains
    of one shape with nothing in common stay apart: sharing a kernel would save no memory traffic,
    and separate ones are often the same function, compiled once. Chains that share a value (the
    updates of same-shaped parameters read one learning rate) may share a kernel: one call, and
    the design's horizontal fusion of an optimizer's updates."""
    shares = len(kernel.nodes) < MAX_NODES_PER_KERNEL // 2
    return any(kernel_of.get(v.id) is kernel or shares and v.id in kernel.reads and not _is_const(v)
               for v in node.inputs)


def _wire(graph: Graph, kernels: list[Kernel], kernel_of: dict[int, Kernel]) -> None:
    """Fill each kernel's inputs (values it reads from outside) and outputs (values read outside)."""
    read_outside: set[int] = {v.id for v in graph.outputs}
    for node in graph.nodes:
        for v in node.inputs:
            if kernel_of.get(node.out.id) is not kernel_of.get(v.id):
                read_outside.add(v.id)
    for kernel in kernels:
        made = {n.out.id for n in kernel.nodes}
        seen: set[int] = set()
        for node in kernel.nodes:
            for v in node.inputs:
                if v.id not in made and v.id not in seen:
                    seen.add(v.id)
                    kernel.inputs.append(v)
        kernel.outputs = [n.out for n in kernel.nodes if n.out.id in read_outside]


# ---------------------------------------------------------------------------------------------
# rematerialization: a kernel recomputes a full-size value from what it reads instead of reading it

MAX_RECOMPUTED_NODES = 12  # per value: a bound on the arithmetic a kernel repeats to save memory traffic


def _rematerialize(graph: Graph, order: list, kernel_of: dict[int, Kernel]) -> None:
    """Where a kernel reads a value of its full shape that an earlier kernel wrote only for it (a
    backward pass reading the forward's exp(x - max), or cross-entropy's target mask), recompute it
    from that value's own inputs instead, when that moves fewer bytes: the earlier kernel stops writing
    it, this one stops reading it, and reads its inputs instead (often ones it reads anyway). Only
    pointwise nodes of the full shape are recomputed; a row statistic (a max, a sum) stays written
    once by the kernel that reduces it. The graph is not changed: the reading kernel gets copies of
    the recomputed nodes under new value ids, and copies of its nodes that read them."""
    kernels = [k for k in order if isinstance(k, Kernel)]
    readers: dict[int, set[int]] = {}  # value id -> ids of the kernels (or nodes) outside its maker reading it
    for item in order:
        nodes = item.nodes if isinstance(item, Kernel) else [item]
        for node in nodes:
            for v in node.inputs:
                maker = kernel_of.get(v.id)
                if maker is not None and maker is not item:
                    readers.setdefault(v.id, set()).add(id(item))
    outputs = {v.id for v in graph.outputs}
    next_id = [1 + max([v.value.id for v in graph.inputs] + [n.out.id for n in graph.nodes], default=0)]
    for kernel in kernels:
        for v in list(kernel.inputs):
            maker = kernel_of.get(v.id)
            if (maker is None or maker is kernel or v.shape != kernel.shape or v.id in outputs
                    or readers.get(v.id) != {id(kernel)}):
                continue
            recomputed = _recomputation(v, maker, kernel)
            if recomputed is not None:
                _recompute_in(kernel, maker, v, *recomputed, next_id)
    for k in kernels:
        if not k.outputs:  # everything it wrote is recomputed where it is read
            order.remove(k)


def _recomputation(v: Value, maker: Kernel, kernel: Kernel) -> tuple[list[Node], list[Value]] | None:
    """The nodes of `maker` that compute `v` from values `kernel` can read (in graph order) and those
    values, or None where that is impossible, too long, or moves more bytes than reading `v`."""
    made = {n.out.id: n for n in maker.nodes}
    needed: dict[int, Node] = {}
    leaves: dict[int, Value] = {}
    stack = [v]
    while stack:
        u = stack.pop()
        if u.id in needed or u.id in leaves:
            continue
        node = made.get(u.id)
        if node is None or u.shape != kernel.shape:
            if node is not None and (u.shape == kernel.shape or not _is_rowlike(u, kernel)):
                return None
            leaves[u.id] = u  # read from memory: an input of `maker`, or a small value it writes
            continue
        if is_row_reduction(node) or node.op == "random":
            return None
        needed[u.id] = node
        stack.extend(node.inputs)
    if len(needed) > MAX_RECOMPUTED_NODES:
        return None
    already = {u.id for u in kernel.inputs}
    added = sum(_nbytes(u) for u in leaves.values() if u.id not in already and u.shape == kernel.shape)
    if added >= 2 * _nbytes(v):  # (reading v, and its maker writing it, is what recomputing saves)
        return None
    return [n for n in maker.nodes if n.out.id in needed], list(leaves.values())


def _is_rowlike(u: Value, kernel: Kernel) -> bool:
    """Whether `u` is smaller than `kernel`'s shape and broadcasts to it (a row statistic, a bias)."""
    return math.prod(u.shape) < math.prod(kernel.shape) and len(u.shape) <= len(kernel.shape) and all(
        a in (1, b) for a, b in zip(reversed(u.shape), reversed(kernel.shape)))


def _nbytes(v: Value) -> int:
    return math.prod(v.shape) * v.dtype.np.itemsize


def _recompute_in(kernel: Kernel, maker: Kernel, v: Value, nodes: list[Node], leaves: list[Value],
                  next_id: list[int]) -> None:
    copies: dict[int, Value] = {}
    for node in nodes:
        out = Value(next_id[0], node.out.shape, node.out.dtype)
        next_id[0] += 1
        out.node = Node(node.op, tuple(copies.get(u.id, u) for u in node.inputs), node.params, out, node.source)
        copies[node.out.id] = out
    body = [copy.node for copy in copies.values()]
    for node in kernel.nodes:
        if any(u.id == v.id for u in node.inputs):
            node = Node(node.op, tuple(copies[v.id] if u.id == v.id else u for u in node.inputs), node.params,
                        node.out, node.source)
        body.append(node)
    kernel.nodes = body
    kernel.inputs = [u for u in kernel.inputs if u.id != v.id]
    kernel.inputs += [u for u in leaves if all(u.id != w.id for w in kernel.inputs)]
    kernel.reads |= {u.id for u in leaves}
    maker.outputs = [u for u in maker.outputs if u.id != v.id]
    for u in leaves:  # a small value of the maker's that is now read here
        if any(n.out.id == u.id for n in maker.nodes) and all(u.id != w.id for w in maker.outputs):
            maker.outputs.append(u)

"""jitorch: a PyTorch-shaped deep learning framework with eager autograd and a fusing compiler.

    import jitorch as jt
    x = jt.randn(64, 128, requires_grad=True)
    y = (x @ w).relu().softmax(-1).sum()
    y.backward()
"""

from . import autograd, dtypes, views  # views: autograd through in-place writes into views
from .backends import cpu as _cpu_backend, meta as _meta_backend  # each registers itself
from .backends.cpu import memory as _cpu_memory
from .autograd import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from .creation import (
    arange,
    as_tensor,
    bernoulli,
    empty,
    empty_like,
    eye,
    from_dlpack,
    from_numpy,
    full,
    full_like,
    linspace,
    logspace,
    multinomial,
    ones,
    ones_like,
    rand,
    rand_like,
    randint,
    randint_like,
    randn,
    randn_like,
    randperm,
    tensor,
    zeros,
    zeros_like,
)
from .device import Device as device
from .dtypes import (
    DType as dtype,
    bfloat16,
    finfo,
    float16,
    float32,
    float64,
    get_default_dtype,
    iinfo,
    int8,
    int16,
    int32,
    int64,
    promote_types,
    result_type,
    set_default_dtype,
    uint8,
)
from .dtypes import bool_ as bool  # noqa: A001 - PyTorch's name
from .ops import (
    abs,
    add,
    all,
    amax,
    amin,
    any,
    argmax,
    argmin,
    argsort,
    bmm,
    broadcast_tensors,
    broadcast_to,
    cat,
    chunk,
    clamp,
    clip,
    clone,
    concat,
    concatenate,
    cos,
    cumsum,
    div,
    dot,
    einsum,
    eq,
    erf,
    exp,
    exp2,
    expm1,
    flatten,
    flip,
    floor,
    floor_divide,
    ceil,
    gather,
    ge,
    gt,
    index_select,
    isfinite,
    isinf,
    isnan,
    le,
    lerp,
    log,
    log1p,
    log2,
    log10,
    log_softmax,
    logical_and,
    logical_not,
    logical_or,
    logical_xor,
    logsumexp,
    lt,
    masked_fill,
    masked_select,
    matmul,
    max,
    maximum,
    mean,
    min,
    minimum,
    mm,
    movedim,
    mul,
    narrow,
    ne,
    neg,
    nonzero,
    norm,
    outer,
    permute,
    pow,
    prod,
    reciprocal,
    relu,
    remainder,
    reshape,
    round,
    rsqrt,
    scatter,
    scatter_add,
    select,
    sigmoid,
    sign,
    sin,
    softmax,
    sort,
    split,
    sqrt,
    square,
    squeeze,
    stack,
    std,
    sub,
    sum,
    swapaxes,
    swapdims,
    t,
    take_along_dim,
    tanh,
    topk,
    transpose,
    tril,
    triu,
    trunc,
    unbind,
    unflatten,
    unsqueeze,
    var,
    where,
)
from .ops import (
    addmm,
    allclose,
    argwhere,
    bitwise_and,
    bitwise_not,
    bitwise_or,
    bitwise_xor,
    count_nonzero,
    diag,
    equal,
    hstack,
    is_tensor,
    isclose,
    logaddexp,
    nan_to_num,
    numel,
    ravel,
    roll,
    tile,
    vstack,
)
from .ops import BFloat16Tensor, BoolTensor, DoubleTensor, FloatTensor, HalfTensor, IntTensor, LongTensor
from .ops import ByteTensor, CharTensor, ShortTensor
from .ops import addcdiv, addcmul
from .ops import (  # more ops common PyTorch code uses
    baddbmm,
    bincount,
    bucketize,
    cdist,
    cross,
    cumprod,
    diag_embed,
    diagonal,
    erfinv,
    index_add,
    index_copy,
    index_fill,
    kron,
    masked_scatter,
    meshgrid,
    repeat_interleave,
    rot90,
    scatter_reduce,
    searchsorted,
    std_mean,
    tensordot,
    trace,
    tril_indices,
    triu_indices,
    unique,
    var_mean,
)
from .ops import install_methods as _install_methods
from .printing import get_printoptions, set_printoptions
from .random import Generator, get_rng_state, initial_seed, manual_seed, seed, set_rng_state
from .tensor import Size, Tensor

_install_methods()
_cpu_memory.tune_malloc_if_requested()
from . import gradients  # noqa: E402 - the gradient rules, written with the ops just installed

from . import compiler  # noqa: E402 - needs the Tensor methods installed
from .compiler import compile, mark_dynamic  # noqa: E402,A001
from .errors import TraceError  # noqa: E402
from .logs import set_logs  # noqa: E402
from .backends import get_float32_matmul_precision, set_float32_matmul_precision  # noqa: E402
from .backends.cpu.threads import count as get_num_threads, set_num_threads  # noqa: E402
from . import accelerator, amp, cuda, distributed, distributions, linalg, nn, onnx, optim, profiler, testing, utils  # noqa: E402,E501 - as `import torch` gives torch.cuda, torch.nn, torch.optim
from .amp import autocast, get_autocast_dtype, is_autocast_enabled  # noqa: E402
from .linalg import matrix_power  # noqa: E402 - torch.matrix_power, as torch.linalg.matrix_power

Tensor.matrix_power = matrix_power

inference_mode = no_grad  # jitorch has no separate inference tensors: no recording is the point

float = float32  # noqa: A001
double = float64
half = float16
long = int64
int = int32  # noqa: A001
short = int16
subtract = sub
multiply = mul
divide = div
true_divide = div
negative = neg
greater = gt
less = lt

__version__ = "0.1.0"
from .serialization import load, save  # noqa: E402 - after the Tensor methods are installed
from . import export  # noqa: E402 - torch.export's place: jitorch.export.export, .save, .load

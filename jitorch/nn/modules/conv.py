"""Convolutions: Conv1d/2d/3d (im2col + one matmul, see `functional.conv2d`) and ConvTranspose1d/2d/3d
(one matmul + col2im, see `functional.conv_transpose2d`)."""

from __future__ import annotations

from ...tensor import Tensor
from .. import functional as F
from .. import init
from ..parameter import Parameter
from .linear import _empty
from .module import Module


class _ConvNd(Module):
    _dims = 2
    _transposed = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self._init_conv(in_channels, out_channels, kernel_size, stride, padding, 0, dilation, groups, bias,
                        padding_mode, device, dtype)

    def _init_conv(self, in_channels: int, out_channels: int, kernel_size, stride, padding, output_padding,
                   dilation, groups: int, bias: bool, padding_mode: str, device, dtype) -> None:
        """The arguments' checks and the parameters, shared by the plain and transposed forms (whose
        weight is (in, out/groups, *kernel) rather than (out, in/groups, *kernel))."""
        n = self._dims
        if groups <= 0:
            raise ValueError("groups must be a positive integer")
        if in_channels % groups:
            raise ValueError("in_channels must be divisible by groups")
        if out_channels % groups:
            raise ValueError("out_channels must be divisible by groups")
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(
                f"padding_mode must be one of 'zeros', 'reflect', 'replicate' or 'circular', "
                f"got {padding_mode!r}"
            )
        if isinstance(padding, str) and padding not in ("same", "valid"):
            raise ValueError(f"Invalid padding string {padding!r}, should be one of ('valid', 'same')")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = F._pair(kernel_size, n)
        self.stride = F._pair(stride, n)
        if padding == "same" and any(s != 1 for s in self.stride):
            raise ValueError("padding='same' is not supported for strided convolutions")
        self.padding = padding if isinstance(padding, str) else F._pair(padding, n)
        self.dilation = F._pair(dilation, n)
        self.groups, self.padding_mode = groups, padding_mode
        self.transposed, self.output_padding = self._transposed, F._pair(output_padding, n)
        rows, cols = (in_channels, out_channels) if self._transposed else (out_channels, in_channels)
        self.weight = Parameter(_empty(rows, cols // groups, *self.kernel_size, dtype=dtype, device=device))
        if bias:
            self.bias = Parameter(_empty(out_channels, dtype=dtype, device=device))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.default_weight_and_bias_(self.weight, self.bias)

    def _mode_padding(self) -> tuple[int, ...]:
        """The F.pad argument that realizes a non-zero padding_mode (then the conv pads nothing)."""
        if self.padding == "valid":
            return (0,) * (2 * self._dims)
        if self.padding == "same":
            pads = []
            for k, d in zip(reversed(self.kernel_size), reversed(self.dilation)):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            return tuple(pads)
        return tuple(p for p in reversed(self.padding) for _ in range(2))

    def _conv(self, input: Tensor, fn) -> Tensor:
        if self.padding_mode != "zeros":
            x = F.pad(input, self._mode_padding(), mode=self.padding_mode)
            return fn(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return fn(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0,) * self._dims:
            s += f", padding={self.padding}"
        if self.output_padding != (0,) * self._dims:
            s += f", output_padding={self.output_padding}"
        if self.dilation != (1,) * self._dims:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s


class Conv1d(_ConvNd):
    """1-D convolution over (N, C, L) inputs."""

    _dims = 1

    def forward(self, input: Tensor) -> Tensor:
        return self._conv(input, F.conv1d)


class Conv2d(_ConvNd):
    """2-D convolution over (N, C, H, W) inputs."""

    _dims = 2

    def forward(self, input: Tensor) -> Tensor:
        return self._conv(input, F.conv2d)


class Conv3d(_ConvNd):
    """3-D convolution over (N, C, D, H, W) inputs (see `F.conv3d` for its cost)."""

    _dims = 3

    def forward(self, input: Tensor) -> Tensor:
        return self._conv(input, F.conv3d)


class _ConvTransposeNd(_ConvNd):
    """Transposed convolution: PyTorch's argument order (output_padding before groups, dilation last)
    and its `output_size` argument of forward, which picks the output_padding that gives that size."""

    _transposed = True
    _function = staticmethod(F.conv_transpose2d)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        output_padding=0,
        groups: int = 1,
        bias: bool = True,
        dilation=1,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ) -> None:
        Module.__init__(self)
        if padding_mode != "zeros":
            raise ValueError(f'Only "zeros" padding mode is supported for {type(self).__name__}')
        if isinstance(padding, str):
            raise ValueError(f"{type(self).__name__} takes int or tuple padding, not {padding!r}")
        self._init_conv(in_channels, out_channels, kernel_size, stride, padding, output_padding, dilation, groups,
                        bias, padding_mode, device, dtype)

    def forward(self, input: Tensor, output_size=None) -> Tensor:
        output_padding = self._output_padding(input, output_size)
        return self._function(
            input, self.weight, self.bias, self.stride, self.padding, output_padding, self.groups, self.dilation
        )

    def _output_padding(self, input: Tensor, output_size) -> tuple[int, ...]:
        """`self.output_padding`, or the one that makes the output `output_size` (spatial dims, or with
        the leading batch and channel dims)."""
        if output_size is None:
            return self.output_padding
        n = self._dims
        leading = input.ndim - n
        output_size = tuple(int(s) for s in output_size)
        if len(output_size) == leading + n:
            output_size = output_size[leading:]
        if len(output_size) != n:
            raise ValueError(
                f"ConvTranspose{n}D: for {input.ndim}D input, output_size must have {n} or {leading + n} "
                f"elements (got {len(output_size)})"
            )
        spatial = input.shape[leading:]
        min_sizes = [
            (size - 1) * s - 2 * p + d * (k - 1) + 1
            for size, s, p, d, k in zip(spatial, self.stride, self.padding, self.dilation, self.kernel_size)
        ]
        max_sizes = [lo + s - 1 for lo, s in zip(min_sizes, self.stride)]
        if any(not lo <= size <= hi for size, lo, hi in zip(output_size, min_sizes, max_sizes)):
            raise ValueError(
                f"requested an output size of {list(output_size)}, but valid sizes range from {min_sizes} to "
                f"{max_sizes} (for an input of {list(spatial)})"
            )
        return tuple(size - lo for size, lo in zip(output_size, min_sizes))


class ConvTranspose1d(_ConvTransposeNd):
    """1-D transposed convolution over (N, C, L) inputs: upsampling by `stride` (speech and audio decoders)."""

    _dims = 1
    _function = staticmethod(F.conv_transpose1d)


class ConvTranspose2d(_ConvTransposeNd):
    """2-D transposed convolution over (N, C, H, W) inputs: upsampling by `stride` (DCGAN and VAE decoders)."""

    _dims = 2


class ConvTranspose3d(_ConvTransposeNd):
    """3-D transposed convolution over (N, C, D, H, W) inputs: upsampling volumes by `stride` (3-d U-Net
    and video decoders)."""

    _dims = 3
    _function = staticmethod(F.conv_transpose3d)

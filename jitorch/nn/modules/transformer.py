"""Attention and transformer layers: MultiheadAttention, the encoder and decoder layers and stacks, Transformer."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

from ... import creation
from ... import dtypes as _dt
from ...dispatch import fuses_composites
from ...tensor import Tensor
from .. import functional as F
from .. import init
from ..parameter import Parameter
from .container import ModuleList
from .linear import Linear, _empty
from .misc import Dropout
from .module import Module
from .normalization import LayerNorm


def _as_additive(mask: Tensor | None, like: Tensor) -> Tensor | None:
    """A mask as an additive float mask: bool True (= masked out, MHA's convention) -> -inf."""
    if mask is None:
        return None
    if mask.dtype is _dt.bool_:
        zeros = creation.zeros(tuple(mask.shape), dtype=like.dtype, device=like.device)
        return zeros.masked_fill(mask, float("-inf"))
    return mask.to(like.dtype)


class NonDynamicallyQuantizableLinear(Linear):
    """PyTorch's name for MultiheadAttention's output projection (kept so reprs match)."""


class MultiheadAttention(Module):
    """Multi-head attention with PyTorch's parameter layout (in_proj_weight, in_proj_bias, out_proj).

    Inputs are (L, N, E), or (N, L, E) with `batch_first=True`, or unbatched (L, E). Boolean masks
    mark positions that may NOT be attended (True = masked out), as in PyTorch.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(
                f"embed_dim and num_heads must be greater than 0, got {embed_dim} and {num_heads}"
            )
        if embed_dim % num_heads:
            raise AssertionError("embed_dim must be divisible by num_heads")
        if add_bias_kv or add_zero_attn or (kdim not in (None, embed_dim)) or (vdim not in (None, embed_dim)):
            raise NotImplementedError(
                "MultiheadAttention: add_bias_kv, add_zero_attn and kdim/vdim != embed_dim are not supported"
            )
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.head_dim = embed_dim // num_heads
        self.kdim = self.vdim = embed_dim
        self.batch_first = batch_first
        self._qkv_same_embed_dim = True
        self.in_proj_weight = Parameter(_empty(3 * embed_dim, embed_dim, dtype=dtype, device=device))
        if bias:
            self.in_proj_bias = Parameter(_empty(3 * embed_dim, dtype=dtype, device=device))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = NonDynamicallyQuantizableLinear(
            embed_dim, embed_dim, bias=bias, device=device, dtype=dtype
        )
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        init.xavier_uniform_(self.in_proj_weight)
        if self.in_proj_bias is not None:
            init.zeros_(self.in_proj_bias)
            init.zeros_(self.out_proj.bias)

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        w, b = self.in_proj_weight, self.in_proj_bias
        e = self.embed_dim
        if query is key is value:
            # self-attention: one wide product, chunked; its backward's three slice gradients
            # become one concatenation (eagerly `gradients.SliceGrad`, traced the compiler's
            # `slices_as_cat`), so the input's and the weight's gradients are one product each
            # and the bias's one sum
            return F.linear(query, w, b).split(e, dim=-1)
        ws = w.split(e)
        bs = b.split(e) if b is not None else (None, None, None)
        return F.linear(query, ws[0], bs[0]), F.linear(key, ws[1], bs[1]), F.linear(value, ws[2], bs[2])

    def _merged_mask(self, attn_mask, key_padding_mask, n: int, q_len: int, k_len: int, like: Tensor):
        mask = _as_additive(attn_mask, like)
        if mask is not None:
            if mask.ndim == 2:
                if tuple(mask.shape) != (q_len, k_len):
                    raise RuntimeError(
                        f"The shape of the 2D attn_mask is {tuple(mask.shape)}, but should be "
                        f"{(q_len, k_len)}."
                    )
            elif mask.ndim == 3:
                if tuple(mask.shape) != (n * self.num_heads, q_len, k_len):
                    raise RuntimeError(
                        f"The shape of the 3D attn_mask is {tuple(mask.shape)}, but should be "
                        f"{(n * self.num_heads, q_len, k_len)}."
                    )
                mask = mask.reshape(n, self.num_heads, q_len, k_len)
            else:
                raise RuntimeError(f"attn_mask's dimension {mask.ndim} is not supported")
        pad = _as_additive(key_padding_mask, like)
        if pad is not None:
            if tuple(pad.shape) != (n, k_len):
                raise RuntimeError(
                    f"expecting key_padding_mask shape of {(n, k_len)}, but got {tuple(pad.shape)}"
                )
            pad = pad.reshape(n, 1, 1, k_len)
            mask = pad if mask is None else mask + pad
        return mask

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """(attention output, head-averaged attention weights or None)."""
        if is_causal and attn_mask is None:
            raise RuntimeError(
                "Need attn_mask if specifying the is_causal hint. You may use the Transformer "
                "module method `generate_square_subsequent_mask` to create this mask."
            )
        unbatched = query.ndim == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        # keep the caller's layout (no transposes before the projections, so they stay one GEMM);
        # `b` is the batch dim, the sequence dim is the other one
        b = 0 if self.batch_first and not unbatched else 1
        n, q_len, e = query.shape[b], query.shape[1 - b], query.shape[2]
        k_len = key.shape[1 - b]
        if e != self.embed_dim:
            raise AssertionError(f"was expecting embedding dimension of {self.embed_dim}, but got {e}")
        if key.shape[b] != n or tuple(key.shape) != tuple(value.shape):
            raise RuntimeError(
                f"key {tuple(key.shape)} and value {tuple(value.shape)} must have one shape, with query "
                f"{tuple(query.shape)}'s batch size in dim {b} (batch_first={self.batch_first}); a decoder's "
                "memory and tgt must have the same batch size"
            )
        q, k, v = self._project(query, key, value)
        h, hd = self.num_heads, self.head_dim
        to_heads = (0, 2, 1, 3) if b == 0 else (1, 2, 0, 3)  # (B|L, L|B, H, hd) -> (N, H, L, hd)
        q = q.reshape(*q.shape[:2], h, hd).permute(to_heads)
        k = k.reshape(*k.shape[:2], h, hd).permute(to_heads)
        v = v.reshape(*v.shape[:2], h, hd).permute(to_heads)
        mask = self._merged_mask(attn_mask, key_padding_mask, n, q_len, k_len, q)
        dropout_p = self.dropout if self.training else 0.0
        if need_weights:
            scores = (q * (1.0 / math.sqrt(hd))) @ k.mT
            if mask is not None:
                scores = scores + mask
            weights = scores.softmax(-1)
            heads = (F.dropout(weights, dropout_p) if dropout_p > 0.0 else weights) @ v
        else:
            # scaled_dot_product_attention, as PyTorch's MultiheadAttention calls it without weights:
            # is_causal is the hint that attn_mask is the causal mask (a fused kernel may apply its
            # own), unless a key padding mask was merged into it
            heads = F._attention(q, k, v, mask, dropout_p, is_causal and key_padding_mask is None, None)
        from_heads = (0, 2, 1, 3) if b == 0 else (2, 0, 1, 3)  # (N, H, L, hd) -> caller's layout
        out = heads.permute(from_heads).reshape(-1, e)
        out = self.out_proj(out).reshape(query.shape[0], query.shape[1], e)
        if unbatched:
            out = out.squeeze(1)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = weights.mean(1)
        return out, (weights.squeeze(0) if unbatched else weights)


def _activation(activation: str | Callable) -> Callable:
    if activation == "relu":
        return F.relu
    if activation == "gelu":
        return F.gelu
    if isinstance(activation, str):
        raise RuntimeError(f"activation should be relu/gelu, not {activation}")
    return activation


class _TransformerLayer(Module):
    """What encoder and decoder layers share: PyTorch's sub-module names and order (so state_dicts
    load both ways), the residual wiring of a sub-layer, attention without weights and the
    feed-forward block.

    A layer is a sequence of residual sub-layers: one per attention in `attentions`, then the
    feed-forward one; sub-layer i owns `norm{i}` and `dropout{i}`, as in PyTorch.
    """

    def __init__(
        self,
        attentions: tuple[str, ...],
        d_model: int,
        nhead: int,
        dim_feedforward: int,
        dropout: float,
        activation: str | Callable,
        layer_norm_eps: float,
        batch_first: bool,
        norm_first: bool,
        bias: bool,
        device,
        dtype,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        for name in attentions:
            attention = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first, **kw)
            setattr(self, name, attention)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, **kw)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, **kw)
        self.norm_first = norm_first
        sublayers = range(1, len(attentions) + 2)
        for i in sublayers:
            setattr(self, f"norm{i}", LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **kw))
        for i in sublayers:
            setattr(self, f"dropout{i}", Dropout(dropout))
        self.activation = _activation(activation)

    def _residual(self, x: Tensor, norm: LayerNorm, dropout: Dropout, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        """x + sublayer(x), normalized after (post-norm) or with the sub-layer's input normalized
        (pre-norm, `norm_first=True`: better-behaved gradients in deep stacks)."""
        if self.norm_first:
            return x + dropout(sublayer(norm(x)))
        return norm(x + dropout(sublayer(x)))

    @staticmethod
    def _attend(
        attention: MultiheadAttention,
        query: Tensor,
        key_value: Tensor,
        attn_mask: Tensor | None,
        key_padding_mask: Tensor | None,
        is_causal: bool,
    ) -> Tensor:
        # without weights, so attention may take scaled_dot_product_attention's fused path
        return attention(
            query,
            key_value,
            key_value,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            need_weights=False,
            is_causal=is_causal,
        )[0]

    def _feed_forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))

    def _fused(self, *tensors: Tensor | None) -> bool:
        """Whether this call runs as one cached compiled function (`jitorch.compiler.composites`),
        forward and backward: on a backend that fuses eager composites (the GPU, where the layer is
        otherwise a hundred dispatches each way), for the library's own layer built of the
        library's own modules with a built-in activation, none with a hook or compiled in place.
        Then the compiled function runs exactly this forward, and nothing a user could watch
        (a hook, a subclass's print) is skipped when its program is replayed."""
        if (type(self) not in (TransformerEncoderLayer, TransformerDecoderLayer)
                or self.activation not in (F.relu, F.gelu) or not fuses_composites(*tensors)):
            return False
        for module in self.modules():
            if (type(module) not in _FUSED_PARTS or module._forward_pre_hooks or module._forward_hooks
                    or module._has_backward_hooks() or "_compiled_call" in module.__dict__):
                return False
        return True

    def _call_fused(self, composite: Callable, **arguments):
        """`composite(layer=self, **arguments)` as a compiled function that this layer keeps."""
        cache = self.__dict__.get("_fused_forward")
        if cache is None:
            cache = self.__dict__["_fused_forward"] = F._composites().Cache()
        return F._composites().call(composite, cache=cache, layer=self, **arguments)


class TransformerEncoderLayer(_TransformerLayer):
    """Self-attention + feed-forward block (post-norm by default, `norm_first=True` for pre-norm)."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str | Callable = "relu",
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        layer_args = (dim_feedforward, dropout, activation, layer_norm_eps, batch_first, norm_first, bias)
        super().__init__(("self_attn",), d_model, nhead, *layer_args, device, dtype)

    def forward(
        self,
        src: Tensor,
        src_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        """src (S, N, E), or (N, S, E) with `batch_first=True`, or unbatched (S, E) -> same shape."""
        if self._fused(src, src_mask, src_key_padding_mask):
            return self._call_fused(_encoder_layer, src=src, src_mask=src_mask,
                                    src_key_padding_mask=src_key_padding_mask, is_causal=is_causal)
        return self._forward(src, src_mask, src_key_padding_mask, is_causal)

    def _forward(self, src: Tensor, src_mask: Tensor | None, src_key_padding_mask: Tensor | None,
                 is_causal: bool) -> Tensor:
        def self_attention(x: Tensor) -> Tensor:
            return self._attend(self.self_attn, x, x, src_mask, src_key_padding_mask, is_causal)

        x = self._residual(src, self.norm1, self.dropout1, self_attention)
        return self._residual(x, self.norm2, self.dropout2, self._feed_forward)


class TransformerDecoderLayer(_TransformerLayer):
    """Self-attention over the target, cross-attention from the target to `memory` (the encoder's
    output), then feed-forward; post-norm by default, `norm_first=True` for pre-norm."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str | Callable = "relu",
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        layer_args = (dim_feedforward, dropout, activation, layer_norm_eps, batch_first, norm_first, bias)
        super().__init__(("self_attn", "multihead_attn"), d_model, nhead, *layer_args, device, dtype)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        tgt_is_causal: bool = False,
        memory_is_causal: bool = False,
    ) -> Tensor:
        """tgt (T, N, E) and memory (S, N, E) (batch first with `batch_first=True`; unbatched (T, E)
        and (S, E)) -> the shape of tgt. tgt_mask is (T, T), memory_mask (T, S); either may also be
        (N * nhead, ., .). Boolean masks mark positions that may NOT be attended."""
        masks = dict(tgt_mask=tgt_mask, memory_mask=memory_mask, tgt_key_padding_mask=tgt_key_padding_mask,
                     memory_key_padding_mask=memory_key_padding_mask)
        if self._fused(tgt, memory, *masks.values()):
            return self._call_fused(_decoder_layer, tgt=tgt, memory=memory, **masks, tgt_is_causal=tgt_is_causal,
                                    memory_is_causal=memory_is_causal)
        return self._forward(tgt, memory, *masks.values(), tgt_is_causal, memory_is_causal)

    def _forward(self, tgt: Tensor, memory: Tensor, tgt_mask: Tensor | None, memory_mask: Tensor | None,
                 tgt_key_padding_mask: Tensor | None, memory_key_padding_mask: Tensor | None,
                 tgt_is_causal: bool, memory_is_causal: bool) -> Tensor:

        def self_attention(x: Tensor) -> Tensor:
            return self._attend(self.self_attn, x, x, tgt_mask, tgt_key_padding_mask, tgt_is_causal)

        def cross_attention(x: Tensor) -> Tensor:
            return self._attend(
                self.multihead_attn, x, memory, memory_mask, memory_key_padding_mask, memory_is_causal
            )

        x = self._residual(tgt, self.norm1, self.dropout1, self_attention)
        x = self._residual(x, self.norm2, self.dropout2, cross_attention)
        return self._residual(x, self.norm3, self.dropout3, self._feed_forward)


_FUSED_PARTS = frozenset({TransformerEncoderLayer, TransformerDecoderLayer, MultiheadAttention,
                          NonDynamicallyQuantizableLinear, Linear, LayerNorm, Dropout})


def _encoder_layer(layer: TransformerEncoderLayer, **arguments) -> Tensor:
    return layer._forward(**arguments)


def _decoder_layer(layer: TransformerDecoderLayer, **arguments) -> Tensor:
    return layer._forward(**arguments)


class _LayerStack(Module):
    """`num_layers` deep copies of `layer` (each with its own parameters), applied in turn, then an
    optional final norm: what TransformerEncoder and TransformerDecoder share."""

    def __init__(self, layer: Module, num_layers: int, norm: Module | None) -> None:
        super().__init__()
        self.layers = ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        self.norm = norm

    def _run(self, x: Tensor, *args, **kwargs) -> Tensor:
        for layer in self.layers:
            x = layer(x, *args, **kwargs)
        return self.norm(x) if self.norm is not None else x


class TransformerEncoder(_LayerStack):
    """`num_layers` deep copies of `encoder_layer`, applied in turn, then an optional final norm.

    `is_causal=None` means False: PyTorch would compare the mask with a causal one, which reads the
    mask's values (a compiled program cannot); pass `is_causal=True` to give the hint.
    """

    def __init__(
        self,
        encoder_layer: TransformerEncoderLayer,
        num_layers: int,
        norm: Module | None = None,
        enable_nested_tensor: bool = True,
        mask_check: bool = True,
    ) -> None:
        super().__init__(encoder_layer, num_layers, norm)

    def forward(
        self,
        src: Tensor,
        mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        is_causal: bool | None = None,
    ) -> Tensor:
        return self._run(src, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=bool(is_causal))


class TransformerDecoder(_LayerStack):
    """`num_layers` deep copies of `decoder_layer`, each attending to the same `memory`, then an
    optional final norm. `tgt_is_causal=None` means False, as `is_causal` of TransformerEncoder."""

    def __init__(self, decoder_layer: TransformerDecoderLayer, num_layers: int, norm: Module | None = None) -> None:
        super().__init__(decoder_layer, num_layers, norm)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        tgt_is_causal: bool | None = None,
        memory_is_causal: bool = False,
    ) -> Tensor:
        return self._run(
            tgt,
            memory,
            tgt_mask=tgt_mask,
            memory_mask=memory_mask,
            tgt_key_padding_mask=tgt_key_padding_mask,
            memory_key_padding_mask=memory_key_padding_mask,
            tgt_is_causal=bool(tgt_is_causal),
            memory_is_causal=memory_is_causal,
        )


class Transformer(Module):
    """The encoder-decoder transformer of "Attention Is All You Need": an encoder stack over src,
    a decoder stack over tgt attending to the encoder's output, each with a final LayerNorm.

    >>> model = Transformer(d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1)
    >>> tgt_mask = Transformer.generate_square_subsequent_mask(7)
    >>> model(jitorch.randn(10, 4, 16), jitorch.randn(7, 4, 16), tgt_mask=tgt_mask).shape
    jitorch.Size([7, 4, 16])
    """

    def __init__(
        self,
        d_model: int = 512,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str | Callable = "relu",
        custom_encoder: Module | None = None,
        custom_decoder: Module | None = None,
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        layer_args = (
            d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, batch_first, norm_first, bias
        )
        kw = {"device": device, "dtype": dtype}

        def final_norm() -> LayerNorm:
            return LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **kw)

        self.encoder = custom_encoder if custom_encoder is not None else TransformerEncoder(
            TransformerEncoderLayer(*layer_args, **kw), num_encoder_layers, final_norm()
        )
        self.decoder = custom_decoder if custom_decoder is not None else TransformerDecoder(
            TransformerDecoderLayer(*layer_args, **kw), num_decoder_layers, final_norm()
        )
        self._reset_parameters()
        self.d_model, self.nhead, self.batch_first = d_model, nhead, batch_first

    def _reset_parameters(self) -> None:
        # as PyTorch: Xavier-uniform for every matrix (custom encoder/decoder too), biases and norms kept
        for p in self.parameters():
            if p.ndim > 1:
                init.xavier_uniform_(p)

    def _check_inputs(self, src: Tensor, tgt: Tensor) -> None:
        if src.ndim == 3:
            b = 0 if self.batch_first else 1
            if src.shape[b] != tgt.shape[b]:
                raise RuntimeError(
                    f"the batch number of src and tgt must be equal: src {tuple(src.shape)} and tgt "
                    f"{tuple(tgt.shape)} differ in dim {b} (the batch dim with batch_first={self.batch_first}); "
                    "pass one target sequence per source sequence"
                )
        if src.shape[-1] != self.d_model or tgt.shape[-1] != self.d_model:
            raise RuntimeError(
                f"the feature number of src and tgt must be equal to d_model: src {tuple(src.shape)}, tgt "
                f"{tuple(tgt.shape)}, d_model={self.d_model}; embed both to d_model features first"
            )

    def forward(
        self,
        src: Tensor,
        tgt: Tensor,
        src_mask: Tensor | None = None,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        src_is_causal: bool | None = None,
        tgt_is_causal: bool | None = None,
        memory_is_causal: bool = False,
    ) -> Tensor:
        """src (S, N, E), tgt (T, N, E) (batch first with `batch_first=True`; unbatched (S, E) and
        (T, E)) -> (T, N, E). Masks as in TransformerEncoder and TransformerDecoder."""
        self._check_inputs(src, tgt)
        memory = self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal)
        return self.decoder(
            tgt,
            memory,
            tgt_mask=tgt_mask,
            memory_mask=memory_mask,
            tgt_key_padding_mask=tgt_key_padding_mask,
            memory_key_padding_mask=memory_key_padding_mask,
            tgt_is_causal=tgt_is_causal,
            memory_is_causal=memory_is_causal,
        )

    @staticmethod
    def generate_square_subsequent_mask(sz: int, device=None, dtype=None) -> Tensor:
        """The (sz, sz) causal mask: -inf above the diagonal (position i may not attend to j > i),
        0 elsewhere; an additive float mask, as PyTorch's."""
        return creation.full((sz, sz), float("-inf"), dtype=dtype, device=device).triu(1)

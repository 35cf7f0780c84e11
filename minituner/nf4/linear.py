"""NF4Linear, a frozen Linear stored in 4 bits, its low-memory variant, and putting a whole
model into 4 bits.

An :class:`NF4Linear` holds its weight as ONE :class:`~minituner.nf4.format.NF4Tensor`
(:attr:`NF4Linear.quantized_weight`), and the forward pass dequantizes that object as it
is. Its tensors are also registered as the module's buffers (``weight_codes``,
``weight_absmax`` and, double-quantized, ``weight_absmax_scale``, ``weight_absmax_offset``,
``weight_absmax_map``: the same tensor objects, no copy), so ``state_dict``,
``load_state_dict``, ``.to(device)`` and memory accounting see them as they see any
buffer. Whenever torch replaces those buffers (a device move or dtype cast, a load with
``assign=True``, an assignment) the layer rebuilds its NF4Tensor from them, so the two
never disagree.

:class:`NF4LinearLowMem` is the same layer whose forward pass saves no dequantized weight
for the backward pass and dequantizes again there (as bitsandbytes' 4-bit matmul does).
Plain ``F.linear`` on a dequantized weight keeps every layer's dense weight alive until its
backward: without activation checkpointing, the whole dense model again. The LLaMA-shaped
model of :mod:`minituner.scale.llama` uses it for its block Linears by default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from minituner.nf4.codec import dequantize_nf4, quantize_nf4
from minituner.nf4.format import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_DOUBLE_QUANT,
    DEQUANT_DTYPES,
    NF4Tensor,
    check_block_size,
    check_dequantize_dtype,
)
from minituner.nf4.storage import nf4_storage_bytes

_FIELDS = ("codes", "absmax", "absmax_scale", "absmax_offset", "absmax_map")
_BUFFER = {f: f"weight_{f}" for f in _FIELDS}  # NF4Tensor field -> buffer name
_FLOAT_STATS = ("weight_absmax", "weight_absmax_scale", "weight_absmax_offset")


class NF4Linear(nn.Module):
    """A frozen Linear whose weight (out_features, in_features) is stored as NF4.

    Build one with :meth:`from_linear`; the constructor makes an all-zero weight of the
    right layout for ``load_state_dict``. The bias stays in full precision as a frozen
    Parameter. forward(x) = F.linear(x, dequantized weight in x.dtype, bias).

    Raises:
        ValueError: a block size that is not a positive even integer, or a weight dtype
            that cannot be dequantized to.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        block_size: int = DEFAULT_BLOCK_SIZE,
        double_quant: bool = DEFAULT_DOUBLE_QUANT,
        device: torch.device | str | None = None,
        weight_dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        check_block_size(block_size)
        check_dequantize_dtype(weight_dtype)
        self.in_features = in_features
        self.out_features = out_features
        shape = (out_features, in_features)
        self.quantized_weight = NF4Tensor.zeros(
            shape, weight_dtype, block_size, double_quant, device
        )
        if bias:
            self.bias = nn.Parameter(
                torch.zeros(out_features, dtype=weight_dtype, device=device), requires_grad=False
            )
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        block_size: int = DEFAULT_BLOCK_SIZE,
        double_quant: bool = DEFAULT_DOUBLE_QUANT,
    ) -> NF4Linear:
        """Quantize ``linear``'s weight (its bias is copied as it is)."""
        w = linear.weight.detach()
        m = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            block_size=block_size,
            double_quant=double_quant,
            device=w.device,
            weight_dtype=w.dtype,
        )
        m.quantized_weight = quantize_nf4(w, block_size=block_size, double_quant=double_quant)
        if linear.bias is not None:
            m.bias.data = linear.bias.detach().clone()
        return m

    # -------------------------------------------------------------------- the one weight

    @property
    def quantized_weight(self) -> NF4Tensor:
        """The weight as one NF4Tensor; its tensors are this module's ``weight_*`` buffers."""
        return self.__dict__["_quantized"]

    @quantized_weight.setter
    def quantized_weight(self, q: NF4Tensor) -> None:
        shape = (self.out_features, self.in_features)
        if not isinstance(q, NF4Tensor) or q.quant_type != "nf4" or tuple(q.shape) != shape:
            raise ValueError(f"expected an nf4 NF4Tensor of shape {shape}, got {q!r:.120}")
        check_dequantize_dtype(q.dtype)
        tensors = q.tensors()
        for field, name in _BUFFER.items():
            self._buffers.pop(name, None)
            if field in tensors:
                self.register_buffer(name, tensors[field])
        self.__dict__["_quantized"] = q

    def _rebuild(self, dtype: torch.dtype | None = None) -> None:
        """Point the NF4Tensor at the current buffers (after torch replaced some)."""
        q = self.__dict__["_quantized"]
        parts = {f: self._buffers.get(n) for f, n in _BUFFER.items()}
        self.__dict__["_quantized"] = replace(q, **parts, dtype=dtype or q.dtype)

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        if name in _FLOAT_STATS + ("weight_codes", "weight_absmax_map"):
            self._rebuild()

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._rebuild()

    def _apply(self, fn, recurse=True):
        # Module.to(dtype) / .half() cast every floating buffer; the float32 block scales
        # must keep their precision, so they pass through `fn` disguised as int32 (only
        # moved between devices). The default dequantize dtype follows the cast.
        stats = [
            k
            for k in _FLOAT_STATS
            if k in self._buffers and self._buffers[k].dtype == torch.float32
        ]
        for k in stats:
            self._buffers[k] = self._buffers[k].view(torch.int32)
        try:
            super()._apply(fn, recurse)
        finally:
            for k in stats:
                self._buffers[k] = self._buffers[k].view(torch.float32)
        cast = fn(torch.empty(0, dtype=self.weight_dtype)).dtype
        self._rebuild(cast if cast in DEQUANT_DTYPES else None)
        return self

    # -------------------------------------------------------------------- use

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype the weight had (and the default dequantize dtype; follows casts)."""
        return self.quantized_weight.dtype

    @property
    def block_size(self) -> int:
        return self.quantized_weight.block_size

    @property
    def double_quant(self) -> bool:
        return self.quantized_weight.double_quant

    def dequantize_weight(
        self, dtype: torch.dtype | None = None, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The weight (out_features, in_features), in ``dtype`` (default: the original's),
        written into ``out`` (contiguous, that dtype and size) when given."""
        return dequantize_nf4(self.quantized_weight, dtype or self.weight_dtype, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, dequantize_nf4(self.quantized_weight, x.dtype), bias)

    def storage_bytes(self) -> int:
        return nf4_storage_bytes(self.quantized_weight)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, block_size={self.block_size}, "
            f"double_quant={self.double_quant}"
        )


class _NF4MatMul(torch.autograd.Function):
    """y = x Wᵀ (+ residual) with W dequantized; the backward dequantizes W again instead
    of saving it. A residual (x's dtype, y's shape) is added by the GEMM itself (beta = 1):
    no separate pass over y."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: NF4Linear, residual: torch.Tensor | None = None):
        ctx.layer, ctx.x_dtype = layer, x.dtype
        w = layer.dequantize_weight(x.dtype)  # (out, in)
        if residual is None:
            return F.linear(x, w)
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        y = torch.addmm(residual.reshape(-1, w.shape[0]), x2, w.t())  # (N, out)
        return y.view(residual.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        w = ctx.layer.dequantize_weight(grad.dtype)  # (out, in)
        return (grad @ w).to(ctx.x_dtype), None, grad if ctx.needs_input_grad[2] else None


def _autocast_keeps(x: torch.Tensor) -> bool:
    """Whether autocast (if on) computes in x's own dtype."""
    device = x.device.type
    return not torch.is_autocast_enabled(device) or x.dtype == torch.get_autocast_dtype(device)


def nf4_linear_residual(layer: NF4Linear, x: torch.Tensor, residual: torch.Tensor):
    """``residual + layer(x)`` with the add inside the GEMM where it can be (a bias-free
    low-memory NF4 Linear, x needing a gradient, residual of x's dtype and the output's
    shape); else the two separately."""
    out_shape = (*x.shape[:-1], layer.out_features)
    if (
        type(layer) is NF4LinearLowMem
        and layer.bias is None
        and torch.is_grad_enabled()
        and x.requires_grad
        and residual.dtype == x.dtype
        and tuple(residual.shape) == out_shape
        and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
        and _autocast_keeps(x)
    ):
        return _NF4MatMul.apply(x, layer, residual)
    return residual + layer(x)


class NF4LinearLowMem(NF4Linear):
    """``NF4Linear`` whose autograd graph holds no dequantized weight (see module doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() or not x.requires_grad:
            return super().forward(x)
        y = _NF4MatMul.apply(x, self, None)
        return y if self.bias is None else y + self.bias.to(y.dtype)


# ---------------------------------------------------------------------------- whole models


def _tied_linears(model: nn.Module) -> set[str]:
    """Names of Linears whose weight is shared with another parameter (tied embeddings)."""
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append(name)
    return {
        name
        for name, m in model.named_modules(remove_duplicate=False)
        if isinstance(m, nn.Linear) and len(set(owners[id(m.weight)])) > 1
    }


def quantize_model_nf4(
    model: nn.Module,
    block_size: int = DEFAULT_BLOCK_SIZE,
    double_quant: bool = DEFAULT_DOUBLE_QUANT,
    module_filter: Callable[[str, nn.Linear], bool] | None = None,
) -> list[str]:
    """Replace nn.Linear layers of ``model`` by NF4Linear in place; return their names.

    ``module_filter(name, linear) -> bool`` picks the layers. By default: every Linear
    whose weight is not tied to another parameter, and, when the model has a ``blocks``
    attribute (MiniGPT), only those inside ``blocks`` (lm_head and embeddings stay).

    Raises:
        ValueError: block_size is not a positive even integer.
    """
    check_block_size(block_size)
    if module_filter is None:
        tied = _tied_linears(model)
        prefix = "blocks." if hasattr(model, "blocks") else ""

        def module_filter(name: str, module: nn.Linear) -> bool:
            return name.startswith(prefix) and name not in tied

    targets = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name and module_filter(name, m)
    ]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, child)
        setattr(parent, child, NF4Linear.from_linear(linear, block_size, double_quant))
    return targets

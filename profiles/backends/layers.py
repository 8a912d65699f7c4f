"""Deployed linear layers: modules that compute ``x @ W^T + b`` with real low-precision
kernels, their weights stored in the low-precision dtype.

Each layer quantizes exactly as the emulation in ``profiles.precisions`` does (it calls the
same ``quantize_int8_rows`` / ``quantize_fp8_rows``), so what sensitivity scores is what is
deployed and timed. Layers accept any leading shape (``[..., in_features]``) and return the
model's dtype (``boundary_dtype``, the input's dtype when unset), so a deployed layer drops
into a model whose other layers stay as they are; the casts this costs at precision
boundaries are part of what profiling measures.

Two interactions of a real deployment live here (``profiles.backends.interact`` sets them up):

- ``share``: layers that read the same tensor in the same input format (q/k/v of attention,
  gate/up of an MLP) hold one :class:`InputShare`, so that tensor is cast or quantized once
  per forward and the result reused, as a fused deployment does;
- ``keep_dtype``: a float-format layer whose output only feeds layers of its own format
  (through elementwise ops, e.g. gate/up -> SiLU * -> down in bf16) keeps its output in that
  format, so the chain runs without casts in between.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from hwcost.profiles.precisions import FP8_E4M3_MAX, quantize_fp8_rows, quantize_int8_rows
from torch import nn

from hwcost.errors import BackendUnavailable
from hwcost.precision import Precision


def is_conv1d(module: nn.Module) -> bool:
    """True for transformers' ``Conv1D`` (GPT-2 family: a linear layer, weight ``[in, out]``)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def is_linear(module: nn.Module) -> bool:
    """True for the layer types a backend can deploy: ``nn.Linear`` and ``Conv1D``."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def linear_params(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer's weight as ``[out, in]`` and its bias, detached (Conv1D's weight transposed)."""
    if isinstance(module, nn.Linear):
        w = module.weight.detach()
    elif is_conv1d(module):
        w = module.weight.detach().t()
    else:
        raise TypeError(f"not a linear layer: {type(module).__name__}")
    b = module.bias.detach() if module.bias is not None else None
    return w, b


class InputShare:
    """One input conversion (cast or quantization) shared by the deployed layers that read the
    same tensor in the same format.

    It remembers the last input tensor (weakly: it never keeps an activation alive; the
    cached result is dropped with it) and its converted form; a layer called on that very
    tensor object reuses the result instead of converting again. Under ``torch.compile`` it
    steps aside: the compiled graph computes the conversion of one tensor once anyway
    (common-subexpression elimination), and Python-side caching would break the trace.
    """

    def __init__(self) -> None:
        self._ref: weakref.ref | None = None
        self._version: int | None = None
        self._key: tuple = ()
        self._value: Any = None
        self.conversions = 0  # how many conversions ran (not reused): for tests and reports

    def get(self, x: torch.Tensor, key: tuple, convert: Callable[[], Any]) -> Any:
        """``convert()``'s result for ``x`` in the format ``key``, computed once per tensor."""
        if torch.compiler.is_compiling():
            return convert()
        version = None if x.is_inference() else x._version  # in-place changes invalidate
        if (self._ref is not None and self._ref() is x and self._key == key
                and self._version == version):
            return self._value
        value = convert()
        self.conversions += 1
        self._ref = weakref.ref(x, self._dropped)
        self._key, self._version, self._value = key, version, value
        return value

    def _dropped(self, ref: weakref.ref) -> None:
        if self._ref is ref:
            self._ref, self._value = None, None


class DeployedLinear(nn.Module):
    """Base of deployed layers: flattens leading dims, converts the input (``_convert``,
    shared through ``share`` when set), calls ``_forward_2d``, restores the dims and returns
    ``keep_dtype`` when set, else ``boundary_dtype`` (else the input's dtype)."""

    precision: Precision
    kernel: str
    share: InputShare | None = None
    keep_dtype: torch.dtype | None = None
    boundary_dtype: torch.dtype | None = None

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features

    @property
    def input_key(self) -> tuple:
        """The input format: layers with equal keys can share one conversion of a tensor."""
        return (type(self).__name__,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]

        def convert():
            return self._convert(x.reshape(-1, self.in_features))

        xin = convert() if self.share is None else self.share.get(x, self.input_key, convert)
        y = self._forward_2d(xin)
        dtype = self.keep_dtype or self.boundary_dtype or x.dtype
        return y.to(dtype).reshape(*lead, self.out_features)

    def _convert(self, x: torch.Tensor) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _forward_2d(self, x: Any) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def weight_dtype(self) -> torch.dtype:
        return self.weight.dtype

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"precision={self.precision.value}, kernel={self.kernel}")


class CastLinear(DeployedLinear):
    """A float format (fp32, bf16, fp16): weights stored in ``dtype``, activations cast to it,
    the matmul runs in it (oneDNN bf16 on CPU, cuBLAS on CUDA), the output cast back."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, precision: Precision,
                 dtype: torch.dtype, kernel: str, device: torch.device) -> None:
        super().__init__(weight.shape[1], weight.shape[0])
        self.precision, self.kernel, self.dtype = precision, kernel, dtype
        self.register_buffer("weight", weight.to(device=device, dtype=dtype).contiguous())
        self.register_buffer("bias", None if bias is None else bias.to(device=device, dtype=dtype))

    @property
    def input_key(self) -> tuple:
        return ("cast", self.dtype)

    def _convert(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype)

    def _forward_2d(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


class Int8DynamicLinear(DeployedLinear):
    """int8 weights (per output channel, symmetric) and int8 activations quantized per token
    at run time; the matmul is ``torch._int_mm`` (int8 x int8 -> int32: oneDNN/VNNI on x86
    CPUs, cuBLASLt IMMA on CUDA), then rescaled in fp32 and the bias added."""

    # cuBLASLt's int8 GEMM needs more than 16 rows; shorter inputs are padded with zeros.
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kernel: str,
                 device: torch.device, min_rows: int = 0) -> None:
        super().__init__(weight.shape[1], weight.shape[0])
        self.precision, self.kernel, self.min_rows = Precision.INT8, kernel, min_rows
        q, scale = quantize_int8_rows(weight)
        self.register_buffer("weight", q.to(device).contiguous())
        # [1, out] so that it broadcasts over tokens
        self.register_buffer("weight_scale", scale.t().to(device).contiguous())
        self.register_buffer("bias", None if bias is None else bias.to(device, torch.float32))

    @property
    def input_key(self) -> tuple:
        return ("int8_rows",)

    def _convert(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return quantize_int8_rows(x)

    def _forward_2d(self, x: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        xq, xs = x
        rows = xq.shape[0]
        if rows < self.min_rows:
            xq = nn.functional.pad(xq, (0, 0, 0, self.min_rows - rows))
        acc = torch._int_mm(xq, self.weight.t())[:rows]
        y = acc.to(torch.float32).mul_(xs).mul_(self.weight_scale)
        return y if self.bias is None else y.add_(self.bias)


class ScaledMMFp8Linear(DeployedLinear):
    """fp8 weights (per output channel scale) and fp8 activations scaled per token; the
    matmul is ``torch._scaled_mm`` with row-wise scales. On H100 that is a native FP8 tensor
    core GEMM; on a CPU, which has no FP8 unit, ATen emulates it (upcasts), so it is measured
    as the slower-than-baseline case it is."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kernel: str,
                 device: torch.device, out_dtype: torch.dtype = torch.float32,
                 fp8_dtype: torch.dtype = torch.float8_e4m3fn, fp8_max: float = FP8_E4M3_MAX
                 ) -> None:
        super().__init__(weight.shape[1], weight.shape[0])
        self.precision, self.kernel = Precision.FP8_E4M3, kernel
        self.out_dtype, self.fp8_dtype, self.fp8_max = out_dtype, fp8_dtype, fp8_max
        q, scale = quantize_fp8_rows(weight, fp8_dtype, fp8_max)
        self.register_buffer("weight", q.to(device).contiguous())
        self.register_buffer("weight_scale", scale.t().to(device).contiguous())  # [1, out]
        self.register_buffer("bias", None if bias is None else bias.to(device, out_dtype))

    @property
    def input_key(self) -> tuple:
        return ("fp8_rows", self.fp8_dtype, self.fp8_max)

    def _convert(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return quantize_fp8_rows(x, self.fp8_dtype, self.fp8_max)

    def _forward_2d(self, x: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        xq, xs = x
        # weight.t() is column-major, the layout cuBLASLt's FP8 GEMM requires for operand b
        y = torch._scaled_mm(xq, self.weight.t(), scale_a=xs, scale_b=self.weight_scale,
                             out_dtype=self.out_dtype)
        return y if self.bias is None else y + self.bias


class HpuFp8Linear(DeployedLinear):
    """Gaudi FP8: weights stored ``float8_e4m3fn`` ``[in, out]`` with a per-output-channel
    scale, activations scaled per token, the matmul ``torch.ops.hpu.fp8_gemm_v2`` (MME FP8,
    fp32 accumulation). ``fp8_max`` is 240 on Gaudi 2 (its E4M3 saturates there), 448 on
    Gaudi 3.

    The op is called with the argument list of its public schema as Intel Neural Compressor's
    and vLLM-HPU's FP8 linear layers pass it, positionally: ``(A, trans_A, B, trans_B, D,
    out_dtype, A_scale_inv, B_scale_inv, bias, accumulate)``. ``A_scale_inv`` is the per-token
    scale ``[tokens, 1]``; the per-channel weight scale is applied to the fp32 output instead of
    being passed as ``B_scale_inv`` (which those wrappers only pass as a scalar): the scale of
    output column j factors out of its sum over the inputs, so the result is the same."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kernel: str,
                 device: torch.device, fp8_max: float, out_dtype: torch.dtype = torch.bfloat16
                 ) -> None:
        super().__init__(weight.shape[1], weight.shape[0])
        self.precision, self.kernel = Precision.FP8_E4M3, kernel
        self.out_dtype, self.fp8_max = out_dtype, fp8_max
        q, scale = quantize_fp8_rows(weight, torch.float8_e4m3fn, fp8_max)
        self.register_buffer("weight", q.t().contiguous().to(device))  # [in, out]
        self.register_buffer("weight_scale", scale.reshape(-1).to(device))  # [out]
        self.register_buffer("bias", None if bias is None else bias.to(device, out_dtype))

    @property
    def input_key(self) -> tuple:
        return ("fp8_rows", torch.float8_e4m3fn, self.fp8_max)

    def _convert(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return quantize_fp8_rows(x, torch.float8_e4m3fn, self.fp8_max)

    def _forward_2d(self, x: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        xq, xs = x
        y = torch.ops.hpu.fp8_gemm_v2(xq, False, self.weight, False, None, torch.float32,
                                      xs, None, None, False)
        y = y.mul_(self.weight_scale).to(self.out_dtype)
        return y if self.bias is None else y + self.bias


def check_gemm_dims(weight: torch.Tensor, multiple: int, what: str) -> None:
    """Raise BackendUnavailable when a kernel's alignment rule rejects a ``[out, in]`` weight."""
    out_f, in_f = weight.shape
    if in_f % multiple or out_f % multiple:
        raise BackendUnavailable(
            f"{what} needs in/out features divisible by {multiple}; layer is {in_f}->{out_f}")

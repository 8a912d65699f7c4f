"""The Gaudi FP8 layer calls ``torch.ops.hpu.fp8_gemm_v2`` exactly as the op's public schema
(the argument list Intel Neural Compressor and vLLM-HPU pass) allows, and with the op's
documented arithmetic its output equals the registry's fp8 emulation at Gaudi 2's range.

This machine has no Gaudi: the op is defined here on the CPU from its public schema, without
the ``B_scale_shape`` argument some internal builds add, so a call that passes anything the
schema lacks fails as it would on a card with the public op."""

from __future__ import annotations

import pytest
import torch
from hwcost.profiles.backends.layers import HpuFp8Linear
from hwcost.profiles.precisions import FP8_E4M3_GAUDI2_MAX, emulation

SCHEMA = ("fp8_gemm_v2(Tensor A, bool trans_A, Tensor B, bool trans_B, Tensor? D, "
          "ScalarType out_dtype, Tensor? A_scale_inv=None, Tensor? B_scale_inv=None, "
          "Tensor? bias=None, bool accumulate=False) -> Tensor")


def _reference_op():
    """``out = (A * A_scale_inv) @ (B * B_scale_inv) (+ bias)`` in fp32, cast to out_dtype."""
    if hasattr(torch.ops, "hpu") and hasattr(torch.ops.hpu, "fp8_gemm_v2"):
        return None  # a real bridge is loaded: use it
    lib = torch.library.Library("hpu", "FRAGMENT")  # noqa: TOR901 - kept alive by the fixture
    lib.define(SCHEMA)

    def impl(a, trans_a, b, trans_b, d, out_dtype, a_scale_inv=None, b_scale_inv=None,
             bias=None, accumulate=False):
        a = a.float().t() if trans_a else a.float()
        b = b.float().t() if trans_b else b.float()
        if a_scale_inv is not None:
            a = a * a_scale_inv
        if b_scale_inv is not None:
            b = b * b_scale_inv
        y = a @ b
        return (y if bias is None else y + bias).to(out_dtype)

    lib.impl("fp8_gemm_v2", impl, "CPU")
    return lib


@pytest.fixture(scope="module")
def fp8_gemm_v2():
    lib = _reference_op()
    yield lib is not None  # True: the schema-exact reference op defined here
    del lib


def test_hpu_fp8_layer_uses_the_public_signature_and_matches_the_emulation(fp8_gemm_v2):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(48, 64, generator=gen)
    b = torch.randn(48, generator=gen)
    x = torch.randn(2, 5, 64, generator=gen)
    layer = HpuFp8Linear(w, b, "torch.ops.hpu.fp8_gemm_v2", torch.device("cpu"),
                         fp8_max=FP8_E4M3_GAUDI2_MAX, out_dtype=torch.float32)
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight.shape == (64, 48)
    y = layer(x)
    ref = emulation("fp8_e4m3", fp8_max=FP8_E4M3_GAUDI2_MAX).linear(x, w, b)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-4)
    # Gaudi 2's range: no quantized weight beyond +-240
    assert layer.weight.float().abs().max() <= FP8_E4M3_GAUDI2_MAX
    if not fp8_gemm_v2:
        return  # on a Gaudi the real op's schema decides the rest
    with pytest.raises(RuntimeError):  # the argument internal builds add is not in the schema
        torch.ops.hpu.fp8_gemm_v2(A=x[0].to(torch.float8_e4m3fn), trans_A=False,
                                  B=layer.weight, trans_B=False, D=None,
                                  out_dtype=torch.float32, B_scale_shape=[48])

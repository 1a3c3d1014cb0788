"""The forward's precision context: autocast, and on CPU in bf16 the math attention kernel for short
sequences (engine/precision.py)."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import profile

from jointspace.engine.precision import MATH_MAX_TOKENS, autocast

CPU = torch.device("cpu")
MATH, FLASH = "aten::_scaled_dot_product_attention_math", "aten::_scaled_dot_product_flash_attention_for_cpu"


def attention_kernels(fn) -> set[str]:
    """The SDPA kernels that ran in fn()'s forward and backward."""
    with profile() as prof:
        fn().float().sum().backward()
    return {e.key for e in prof.key_averages()} & {MATH, FLASH}


def mha(tokens: int, batch_first: bool = True):
    torch.manual_seed(0)
    m = torch.nn.MultiheadAttention(64, 4, batch_first=batch_first)
    x = torch.randn(3, tokens, 64) if batch_first else torch.randn(tokens, 3, 64)
    return m, x


@pytest.mark.parametrize("batch_first", [True, False])
def test_short_attention_runs_on_the_math_kernel_under_cpu_bf16(batch_first):
    m, x = mha(37, batch_first)
    ctx = autocast(CPU, "bf16")

    def run():
        with ctx:
            return m(x, x, x, need_weights=False)[0]

    assert attention_kernels(run) == {MATH}
    assert attention_kernels(run) == {MATH}  # the same context entered again (accumulation does)


def test_long_attention_fp32_and_direct_calls_keep_pytorchs_choice():
    m, x = mha(MATH_MAX_TOKENS + 1)
    ctx = autocast(CPU, "bf16")

    def run_long():
        with ctx:
            return m(x, x, x, need_weights=False)[0]

    def run_fp32():
        with autocast(CPU, "none"):
            return m(x[:, :37], x[:, :37], x[:, :37], need_weights=False)[0]

    def direct(query_tokens: int, key_tokens: int):
        q = torch.randn(2, 4, query_tokens, 16, requires_grad=True)
        k = torch.randn(2, 4, key_tokens, 16, requires_grad=True)

        def run():
            with ctx:
                return F.scaled_dot_product_attention(query=q, key=k, value=k)
        return run

    assert attention_kernels(run_long) == {FLASH}
    assert attention_kernels(run_fp32) == {FLASH}
    assert attention_kernels(direct(20, 20)) == {MATH}
    assert attention_kernels(direct(20, MATH_MAX_TOKENS + 1)) == {FLASH}  # a long key is long
    assert attention_kernels(direct(MATH_MAX_TOKENS + 1, 20)) == {FLASH}


def test_unbatched_attention_is_routed_by_its_length():
    m = torch.nn.MultiheadAttention(64, 4)
    ctx = autocast(CPU, "bf16")
    for tokens, kernel in ((37, MATH), (MATH_MAX_TOKENS + 1, FLASH)):
        x = torch.randn(tokens, 64)  # [L, E]

        def run(x=x):
            with ctx:
                return m(x, x, x, need_weights=False)[0]
        assert attention_kernels(run) == {kernel}


def test_routed_attention_is_the_math_kernels_result_and_close_to_flash():
    m, x = mha(37)

    def out_and_grads(ctx):
        m.zero_grad()
        with ctx:
            y = m(x, x, x, need_weights=False)[0]
        y.float().square().sum().backward()
        return [y.detach().float()] + [p.grad.clone() for p in m.parameters()]

    routed = out_and_grads(autocast(CPU, "bf16"))
    with sdpa_kernel(SDPBackend.MATH):
        math = out_and_grads(torch.autocast("cpu", dtype=torch.bfloat16))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        flash = out_and_grads(torch.autocast("cpu", dtype=torch.bfloat16))
    for a, b, c in zip(routed, math, flash, strict=True):
        assert torch.equal(a, b)
        assert torch.allclose(a, c, rtol=0.05, atol=0.05 * float(c.abs().max()))

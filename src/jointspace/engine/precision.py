"""Precision of a forward: autocast by the `amp` setting and, on CPU under bf16/fp16 autocast, the math
attention kernel for short sequences.

PyTorch's default kernel for `scaled_dot_product_attention` on CPU is flash attention, and in bf16 its
backward is slow on short sequences: at 37 tokens (batch 128, 4 heads of 32, 2 threads) a forward +
backward took 30 ms against 6 ms on the math kernel. The tiny CLIP's whole step ran at 491 samples/s
in bf16 with flash, 923 with math, 440 in fp32 (BENCHMARKS.md). Past a few hundred tokens flash wins,
and the math kernel keeps the [batch, heads, L, L] weights for backward, so only calls whose query and
key are both at most `MATH_MAX_TOKENS` long are routed. It is the same attention; only the kernel,
and so the rounding, differs. fp32 and GPU runs keep PyTorch's choice.
"""

from __future__ import annotations

import contextlib
import threading

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode


def amp_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """The autocast dtype of a precision setting ('auto': bf16 on a CUDA GPU that has it, else none)."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "none"
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """The forward's context for the configured precision: autocast, and on CPU the attention kernel
    that is fast there; it can be entered again after each exit."""
    dtype = amp_dtype(device, amp)
    return contextlib.nullcontext() if dtype is None else _Autocast(device, dtype)


class _Autocast:
    """torch.autocast plus the attention-kernel choice, entered afresh each time (micro-batches enter
    one step's context in turn)."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.device, self.dtype, self._local = device, dtype, threading.local()

    def __enter__(self) -> None:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.autocast(self.device.type, dtype=self.dtype))
        stack.enter_context(attention_context(self.device, self.dtype))
        self._local.__dict__.setdefault("stacks", []).append(stack)

    def __exit__(self, *exc) -> bool:
        return bool(self._local.stacks.pop().__exit__(*exc))


# sdpa_kernel sets process-wide flags: routed calls of two threads must not interleave their set and
# restore (the flags would stay math-only). Other threads' attention meanwhile also runs on math.
_BACKEND_FLAGS = threading.RLock()
MATH_MAX_TOKENS = 128  # measured: math ahead up to 160 tokens in bf16, flash ahead at 197 (2 threads)


class ShortAttentionOnMath(TorchFunctionMode):
    """Runs attention on the math kernel when query and key are short: calls of
    `scaled_dot_product_attention` (timm, transformers, open_clip's own blocks) and of
    `multi_head_attention_forward` (nn.MultiheadAttention, which calls it from inside, where this mode
    is off; its inputs are sequence-first)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _short(func, args, kwargs):
            with _BACKEND_FLAGS, sdpa_kernel(SDPBackend.MATH):
                return func(*args, **kwargs)
        return func(*args, **kwargs)


def _short(func, args: tuple, kwargs: dict) -> bool:
    if func is F.scaled_dot_product_attention:
        axis = -2  # [..., L, E]
    elif func is F.multi_head_attention_forward:
        axis = 0  # [L, N, E] or [L, E]
    else:
        return False
    query = args[0] if args else kwargs["query"]
    key = args[1] if len(args) > 1 else kwargs["key"]
    return max(query.shape[axis], key.shape[axis]) <= MATH_MAX_TOKENS


def attention_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """The kernel choice for a forward on `device` under autocast to `dtype` (None: no autocast)."""
    if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
        return ShortAttentionOnMath()
    return contextlib.nullcontext()

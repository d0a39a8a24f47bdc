"""The noise increments of the noisy simulations: standardised (mean 0, variance 1) draws.

* ``gaussian``: N(0, 1), ``torch.randn``, as the authors draw it (Euler-Maruyama).
* ``two_point``: +1 or -1 with probability 1/2 each. Mean, variance and third moment equal the
  Gaussian's, so Euler's scheme keeps its weak order (the *simplified weak Euler scheme*,
  Kloeden & Platen, Numerical Solution of SDEs, 1992, section 14.1): expectations of smooth
  functions of the trajectory, such as the mean and spread of a feedback update, are the same
  up to O(dt). Each increment costs one random bit instead of a Gaussian transform, about 8x
  less on a CPU (``docs/performance.md``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["standard_noise", "NoiseSource", "NOISE_KINDS"]

NOISE_KINDS = ("gaussian", "two_point")
_WORD_BITS = 32
_SIGN = -(2**31)  # the float32 sign bit, as an int32
_ONE = 0x3F800000  # the bits of float32 1.0


def standard_noise(shape: tuple[int, ...], kind: str, dtype: torch.dtype, device: torch.device | str,
                   generator: torch.Generator | None = None) -> Tensor:
    """Increments of mean 0 and variance 1, ``shape`` in ``dtype`` on ``device``."""
    if kind == "gaussian":
        return torch.randn(shape, dtype=dtype, device=device, generator=generator)
    if kind == "two_point":
        return _two_point(shape, device, generator).to(dtype)
    raise ValueError(f"unknown noise {kind!r}; choose one of {NOISE_KINDS}")


class NoiseSource:
    """Scaled increments scale * xi of one ``shape``, drawn step after step into reused buffers
    (the split drive's noise, :mod:`~lightning_dfc.core.dynamics`).

    For two-point increments in float32 the random words' bits go straight into the result's
    sign: ``copysign(scale, bits)``, two passes over memory after the draw instead of four (the
    same increments as :func:`standard_noise` from the same generator state)."""

    def __init__(self, shape: tuple[int, ...], kind: str, dtype: torch.dtype, device: torch.device | str,
                 generator: torch.Generator | None = None) -> None:
        if kind not in NOISE_KINDS:
            raise ValueError(f"unknown noise {kind!r}; choose one of {NOISE_KINDS}")
        self.shape, self.kind, self.dtype, self.device, self.generator = tuple(shape), kind, dtype, device, generator
        self.bits = kind == "two_point" and dtype == torch.float32
        self.buffer: Tensor | None = None
        if self.bits:
            n = 1
            for size in self.shape:
                n *= size
            rows = (n + _WORD_BITS - 1) // _WORD_BITS
            self.n = n
            self.words = torch.empty(rows, 1, dtype=torch.int32, device=device)
            self.shifts = _shifts(device)
            self._shifted: Tensor | None = None
            # the source's own result buffer (zeros until the first draw): the shifted words are
            # written into it and their signs copied in place, one buffer less in the cache
            flat = torch.zeros(rows * _WORD_BITS, dtype=torch.float32, device=device)
            self.buffer = flat[:n].view(self.shape)
            self._buffer_bits = flat.view(torch.int32).view(rows, _WORD_BITS)

    def scaled(self, scale: Tensor, out: Tensor) -> Tensor:
        """``out`` = scale * xi, a fresh draw xi (``scale`` broadcast against the shape); ``out``
        may be :attr:`buffer` (two-point float32: the draw then needs no other buffer)."""
        if not self.bits:
            return torch.mul(standard_noise(self.shape, self.kind, self.dtype, self.device, self.generator), scale,
                             out=out)
        self.words.random_(-(2**31), 2**31, generator=self.generator)
        if out is self.buffer:
            torch.bitwise_left_shift(self.words, self.shifts, out=self._buffer_bits)
            return torch.copysign(scale, out, out=out)  # sign bit = a random bit
        if self._shifted is None:
            self._shifted = torch.empty_like(self._buffer_bits)
        torch.bitwise_left_shift(self.words, self.shifts, out=self._shifted)
        signs = self._shifted.view(-1)[:self.n].view(torch.float32).view(self.shape)
        return torch.copysign(scale, signs, out=out)


def _two_point(shape: tuple[int, ...], device, generator) -> Tensor:
    """float32 +-1: bit k of a random word becomes the sign bit of 1.0 (three integer passes)."""
    n = 1
    for size in shape:
        n *= size
    words = torch.empty((n + _WORD_BITS - 1) // _WORD_BITS, 1, dtype=torch.int32, device=device)
    words.random_(-(2**31), 2**31, generator=generator)  # all 32 bits random
    shifts = _shifts(device)
    bits = torch.bitwise_left_shift(words, shifts).bitwise_and_(_SIGN).bitwise_or_(_ONE)
    return bits.view(-1)[:n].view(torch.float32).view(shape)


_SHIFTS: dict[str, Tensor] = {}


def _shifts(device) -> Tensor:
    """31, 30, ..., 0 (int32) on ``device``, made once: bit k of a word -> bit 31."""
    key = str(device)
    if key not in _SHIFTS:
        _SHIFTS[key] = torch.arange(_WORD_BITS - 1, -1, -1, dtype=torch.int32, device=device)
    return _SHIFTS[key]

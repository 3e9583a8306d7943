"""Convolutions, their adjoints and per-sample variants for the rules.

A :class:`ConvGeometry` holds a layer's stride, padding, dilation and groups; every helper honours
all four (the authors' released code ignores groups and dilation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.grad import conv2d_weight



@dataclass(frozen=True)
class ConvGeometry:
    """Geometry of a 2-d convolution with symmetric zero padding."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    def conv(self, x: Tensor, kernel: Tensor) -> Tensor:
        """(N, C, H, W) x (O, C/g, kh, kw) -> (N, O, h, w), no bias."""
        return F.conv2d(x, kernel, None, self.stride, self.padding, self.dilation, self.groups)

    def conv_t(self, y: Tensor, kernel: Tensor, input_shape: torch.Size) -> Tensor:
        """Adjoint of :meth:`conv` w.r.t. its input: (N, O, h, w) -> ``input_shape``."""
        return self._transposed(y, kernel, input_shape, self.groups)

    def _transposed(self, y: Tensor, kernel: Tensor, input_shape: torch.Size | tuple[int, ...], groups: int) -> Tensor:
        """The transposed convolution that inverts this geometry's output size to ``input_shape``: the same
        numbers as autograd's input gradient (``conv2d_input``), which runs 1.1–7× slower on the CPU."""
        extra = tuple(
            size - ((out - 1) * s - 2 * p + d * (k - 1) + 1)
            for size, out, s, p, d, k in zip(
                input_shape[2:], y.shape[2:], self.stride, self.padding, self.dilation, kernel.shape[2:]
            )
        )
        return F.conv_transpose2d(y, kernel, None, self.stride, self.padding, extra, groups, self.dilation)

    def reach(self, active_out: Tensor, input_shape: torch.Size, kernel_shape: torch.Size) -> Tensor:
        """Input units whose receptive field holds an active output: bool (N, O, h, w) -> bool, broadcastable
        to ``input_shape`` ((N, 1, H, W) for an ungrouped convolution)."""
        n, o = active_out.shape[:2]
        g = self.groups
        per_group = active_out.reshape(n, g, o // g, *active_out.shape[2:]).any(dim=2).to(torch.float32)
        ones = torch.ones(g, 1, *kernel_shape[2:], dtype=per_group.dtype, device=per_group.device)
        shape = (n, g, *input_shape[2:])
        hits = self._transposed(per_group, ones, shape, g)
        if g > 1:
            hits = hits.repeat_interleave(input_shape[1] // g, dim=1)
        return hits > 0.5

    def fields_with_positive(self, x: Tensor, kernel_size: tuple[int, int]) -> Tensor:
        """Whether each output's receptive field holds a positive entry of ``x ≥ 0``, per group:
        (N, C, H, W) -> bool (N, g, h, w).  The positions holding a positive entry (the sign, 0 or 1, of the
        group's channel maximum) are counted with an all-ones convolution, as in :meth:`reach`: a count
        is at least 1 or exactly 0, whatever the convolution algorithm rounds (on the CPU this is
        10-20× faster than a max pool over the channel maximum)."""
        n, c = x.shape[:2]
        g = self.groups
        top = x if c == g else x.reshape(n, g, c // g, *x.shape[2:]).amax(dim=2)
        ones = torch.ones(g, 1, *kernel_size, dtype=x.dtype, device=x.device)
        return F.conv2d(top.sign(), ones, None, self.stride, self.padding, self.dilation, g) > 0.5

    def unfold(self, x: Tensor, kernel_size: tuple[int, int]) -> Tensor:
        """Receptive fields as columns, groups ignored: (N, C, H, W) -> (N, C·kh·kw, L), L = h·w."""
        if self.is_pointwise(kernel_size):
            return x[:, :, :: self.stride[0], :: self.stride[1]].reshape(*x.shape[:2], -1)
        return F.unfold(x, kernel_size, self.dilation, self.padding, self.stride)

    def fold(self, columns: Tensor, input_shape: torch.Size, kernel_size: tuple[int, int]) -> Tensor:
        """Adjoint of :meth:`unfold` (overlapping fields summed): (N, C·kh·kw, L) -> ``input_shape``."""
        if self.is_pointwise(kernel_size):
            if self.stride == (1, 1):
                return columns.reshape(input_shape)
            out = columns.new_zeros(input_shape)
            strided = out[:, :, :: self.stride[0], :: self.stride[1]]
            strided.copy_(columns.reshape(strided.shape))
            return out
        return F.fold(columns, input_shape[2:], kernel_size, self.dilation, self.padding, self.stride)

    def is_pointwise(self, kernel_size: tuple[int, int]) -> bool:
        """A 1×1 kernel without padding: unfolding is a (strided) view, no copy of the fields."""
        return tuple(kernel_size) == (1, 1) and self.padding == (0, 0)

    # Per-sample kernels: sample n is convolved with its own kernel kernels[n].  The batch is folded
    # into the channel dimension and the convolution run with groups * N groups.

    def conv_per_sample(self, x: Tensor, kernels: Tensor) -> Tensor:
        """(N, C, H, W) x (N, O, C/g, kh, kw) -> (N, O, h, w)."""
        n, o = kernels.shape[:2]
        out = F.conv2d(
            x.reshape(1, -1, *x.shape[2:]), kernels.reshape(n * o, *kernels.shape[2:]), None,
            self.stride, self.padding, self.dilation, self.groups * n,
        )
        return out.reshape(n, o, *out.shape[2:])

    def conv_t_per_sample(self, y: Tensor, kernels: Tensor, input_shape: torch.Size) -> Tensor:
        """Adjoint of :meth:`conv_per_sample` w.r.t. its input: (N, O, h, w) -> ``input_shape``."""
        n, o = kernels.shape[:2]
        out = self._transposed(
            y.reshape(1, n * o, *y.shape[2:]), kernels.reshape(n * o, *kernels.shape[2:]),
            (1, n * input_shape[1], *input_shape[2:]), self.groups * n,
        )
        return out.reshape(input_shape)

    def wgrad_per_sample(self, x: Tensor, y: Tensor, kernel_shape: torch.Size) -> Tensor:
        """Per-sample adjoint w.r.t. the kernel: ``out[n] = Σ_positions y[n] ⊗ x[n]`` -> (N, O, C/g, kh, kw)."""
        n = x.shape[0]
        o = kernel_shape[0]
        out = conv2d_weight(
            x.reshape(1, -1, *x.shape[2:]), (n * o, *kernel_shape[1:]), y.reshape(1, n * o, *y.shape[2:]),
            self.stride, self.padding, self.dilation, self.groups * n,
        )
        return out.reshape(n, *kernel_shape)


"""The unified hybrid block (AutoNAD Sec. IV-A) and its three weight-sharing modes (Sec. IV-B).

Every block is written in one two-step form::

    q, k, v = step_I(norm1(x))                 # three shared 1x1 projections
    x = x + proj(step_II[op](q, k, v))         # transformer | conv (kernel 3/5) | mlp
    x = x + MixFFN(norm2(x), ratio)

`sharing` decides which weights the operator choices have in common:

- ``"cross"`` (the paper's method): one step I and one output projection for all operators;
  conv kernel 3 inherits the centre of kernel 5.
- ``"entangled"``: step I and the projection shared only within an operator type.
- ``"classical"``: every operator choice (transformer, conv3, conv5, mlp) owns its weights.

In every mode the norms and the FFN belong to the block, and widths slice the stored tensors.
"""

from __future__ import annotations

from torch import Tensor, nn

from autonad_edge.models.attention import Attention, ElasticAttention
from autonad_edge.models.conv_mixing import ConvMixing, ElasticConvMixing
from autonad_edge.models.elastic import ElasticConv2d, ElasticLayerNorm2d
from autonad_edge.models.layers import LayerNorm2d
from autonad_edge.models.mix_ffn import ElasticMixFFN, MixFFN, ffn_hidden
from autonad_edge.models.qkv import QKV, ElasticQKV
from autonad_edge.models.shift_mlp import ElasticShiftMLP, ShiftMLP
from autonad_edge.space import BlockArch

SHARING_MODES = ("cross", "entangled", "classical")


def choice_name(op: str, kernel: int | None) -> str:
    return f"conv{kernel}" if op == "conv" else op


def mixing_step(x: Tensor, norm1: nn.Module, qkv: nn.Module, operator: nn.Module, proj: nn.Module) -> Tensor:
    """Steps I and II with the residual: ``x + proj(op(qkv(norm1 x)))``."""
    return x + proj(operator(*qkv(norm1(x))))


def ffn_step(x: Tensor, norm2: nn.Module, ffn: nn.Module) -> Tensor:
    """The feed-forward step with the residual: ``x + ffn(norm2 x)``."""
    return x + ffn(norm2(x))


def build_operator(channels: int, op: str, kernel: int | None, head_dim: int, sr_ratio: int) -> nn.Module:
    """The static step II of operator `op` (`kernel` for conv)."""
    if op == "transformer":
        return Attention(channels, head_dim, sr_ratio)
    if op == "conv":
        return ConvMixing(channels, head_dim, kernel or 3)
    return ShiftMLP(channels)


class HybridBlock(nn.Module):
    """A static block: one operator, fixed width. What `extract()` produces.

    Its two steps are independent computations (the FFN does not depend on the operator), so
    the latency table times them apart (`models.units`): the same code, `mixing_step` and
    `ffn_step`."""

    def __init__(
        self, norm1: nn.Module, qkv: QKV, operator: nn.Module, proj: nn.Conv2d,
        norm2: nn.Module, ffn: MixFFN,
    ) -> None:
        super().__init__()
        self.norm1, self.qkv, self.operator, self.proj = norm1, qkv, operator, proj
        self.norm2, self.ffn = norm2, ffn

    @classmethod
    def build(cls, channels: int, block: BlockArch, head_dim: int, sr_ratio: int) -> "HybridBlock":
        return cls(
            LayerNorm2d(channels), QKV(channels), build_operator(channels, block.op, block.kernel, head_dim, sr_ratio),
            nn.Conv2d(channels, channels, 1), LayerNorm2d(channels),
            MixFFN(channels, ffn_hidden(channels, block.ffn_ratio)),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = mixing_step(x, self.norm1, self.qkv, self.operator, self.proj)
        return ffn_step(x, self.norm2, self.ffn)


class ElasticHybridBlock(nn.Module):
    """A supernet block: every operator choice, at the stage's largest width and FFN ratio."""

    def __init__(
        self,
        max_ch: int,
        max_ffn_ratio: float,
        head_dim: int,
        sr_ratio: int,
        operators: tuple[str, ...],
        kernels: tuple[int, ...],
        sharing: str = "cross",
    ) -> None:
        super().__init__()
        if sharing not in SHARING_MODES:
            raise ValueError(f"sharing must be one of {', '.join(SHARING_MODES)}, got {sharing!r}")
        self.sharing = sharing
        choices = [(op, k) for op in operators for k in (kernels if op == "conv" else (None,))]
        step1_keys = {self._step1_key(op, k) for op, k in choices}
        self.norm1 = ElasticLayerNorm2d(max_ch)
        self.qkv = nn.ModuleDict({key: ElasticQKV(max_ch) for key in sorted(step1_keys)})
        self.proj = nn.ModuleDict({key: ElasticConv2d(max_ch, max_ch) for key in sorted(step1_keys)})
        step2: dict[str, nn.Module] = {}
        for op, k in choices:
            key = self._step2_key(op, k)
            if key in step2:
                continue
            if op == "transformer":
                step2[key] = ElasticAttention(max_ch, head_dim, sr_ratio)
            elif op == "conv":
                # Shared kernels store the largest; a classical choice stores its own size.
                step2[key] = ElasticConvMixing(
                    max_ch, head_dim, k if sharing == "classical" else max(kernels)
                )
            else:
                step2[key] = ElasticShiftMLP(max_ch)
        self.step2 = nn.ModuleDict(step2)
        self.norm2 = ElasticLayerNorm2d(max_ch)
        self.ffn = ElasticMixFFN(max_ch, ffn_hidden(max_ch, max_ffn_ratio))
        self.head_dim, self.sr_ratio = head_dim, sr_ratio

    def _step1_key(self, op: str, kernel: int | None) -> str:
        if self.sharing == "cross":
            return "shared"
        if self.sharing == "entangled":
            return op
        return choice_name(op, kernel)

    def _step2_key(self, op: str, kernel: int | None) -> str:
        return choice_name(op, kernel) if self.sharing == "classical" else op

    def forward(self, x: Tensor, block: BlockArch) -> Tensor:
        key1 = self._step1_key(block.op, block.kernel)
        q, k, v = self.qkv[key1](self.norm1(x))
        y = self.step2[self._step2_key(block.op, block.kernel)](q, k, v, kernel=block.kernel)
        x = x + self.proj[key1](y, x.shape[1])
        return x + self.ffn(self.norm2(x), ffn_hidden(x.shape[1], block.ffn_ratio))

    def extract(self, ch: int, block: BlockArch) -> HybridBlock:
        key1 = self._step1_key(block.op, block.kernel)
        step2 = self.step2[self._step2_key(block.op, block.kernel)]
        return HybridBlock(
            self.norm1.extract(ch),
            self.qkv[key1].extract(ch),
            step2.extract(ch, kernel=block.kernel),
            self.proj[key1].extract(ch, ch),
            self.norm2.extract(ch),
            self.ffn.extract(ch, ffn_hidden(ch, block.ffn_ratio)),
        )

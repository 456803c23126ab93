"""The static segmentation network: what `HybridSupernet.extract()` returns and what is
retrained, exported and deployed. Plain modules only: no slicing or branching at run time.
"""

from __future__ import annotations

from torch import Tensor, nn

from autonad_edge.models.geometry import EMBED_KERNELS, EMBED_STRIDES
from autonad_edge.models.hybrid_block import HybridBlock
from autonad_edge.models.layers import LayerNorm2d, init_weights
from autonad_edge.models.mfam import MFAM
from autonad_edge.space import Arch, SearchSpace

__all__ = ["EMBED_KERNELS", "EMBED_STRIDES", "SegmentationNet", "Stage"]


class Stage(nn.Module):
    def __init__(self, embed: nn.Conv2d, embed_norm: nn.Module, blocks: list[nn.Module], norm: nn.Module) -> None:
        super().__init__()
        self.embed, self.embed_norm = embed, embed_norm
        self.blocks = nn.Sequential(*blocks)
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.blocks(self.embed_norm(self.embed(x))))


class SegmentationNet(nn.Module):
    """Hybrid backbone (4 stages) + MFAM decoder; logits at the input's spatial size."""

    def __init__(self, stages: list[Stage], decoder: MFAM, arch: Arch, num_classes: int) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.decoder = decoder
        self.arch = arch
        self.num_classes = num_classes

    @classmethod
    def from_arch(cls, arch: Arch, space: SearchSpace, num_classes: int) -> "SegmentationNet":
        """A freshly initialised network of `arch` (for training from scratch, or counting)."""
        space.validate(arch)
        stages = []
        in_ch = space.in_chans
        for i, (stage, stage_space) in enumerate(zip(arch.stages, space.stages)):
            k, s = EMBED_KERNELS[i], EMBED_STRIDES[i]
            c = stage.width
            blocks = [HybridBlock.build(c, b, space.head_dim, stage_space.sr_ratio) for b in stage.blocks]
            stages.append(Stage(nn.Conv2d(in_ch, c, k, s, k // 2), LayerNorm2d(c), blocks, LayerNorm2d(c)))
            in_ch = c
        decoder = MFAM.build(arch.widths, arch.edges, arch.pool_sizes, space.decoder_channels, num_classes,
                             detail_channels=space.detail_channels, in_chans=space.in_chans)
        net = cls(stages, decoder, arch, num_classes)
        init_weights(net)
        # The classifier keeps PyTorch's default init: std-0.02 logits learn the rare defect
        # classes very slowly from scratch (measured on MT and toy sets).
        net.decoder.classifier.reset_parameters()
        return net

    @property
    def classifier(self) -> nn.Conv2d:
        """The last layer: the 1x1 conv to class logits (before the resize to the input)."""
        return self.decoder.classifier

    def features(self, x: Tensor) -> list[Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.features(x), x)

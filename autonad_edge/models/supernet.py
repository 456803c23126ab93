"""The hybrid weight-sharing supernet (AutoNAD Sec. IV).

`HybridSupernet(space, num_classes, sharing)` holds every choice of `space` at its largest
shape. ``supernet(x, arch)`` runs the subnet `arch` with inherited (sliced) weights;
``supernet.extract(arch)`` returns the same subnet as a plain `SegmentationNet` holding copies
of those weights, whose output equals the supernet's for that arch.
"""

from __future__ import annotations

import random

import torch
from torch import Tensor, nn

from autonad_edge.models.elastic import ElasticConv2d, ElasticLayerNorm2d
from autonad_edge.models.hybrid_block import SHARING_MODES, ElasticHybridBlock
from autonad_edge.models.mfam import ElasticMFAM
from autonad_edge.models.network import EMBED_KERNELS, EMBED_STRIDES, SegmentationNet, Stage
from autonad_edge.space import Arch, ChoicePrior, SearchSpace, StageArch, StageSpace


class ElasticStage(nn.Module):
    def __init__(self, index: int, max_in: int, space: SearchSpace, stage: StageSpace, sharing: str) -> None:
        super().__init__()
        self.kernel, self.stride = EMBED_KERNELS[index], EMBED_STRIDES[index]
        self.embed = ElasticConv2d(max_in, stage.max_width, self.kernel)
        self.embed_norm = ElasticLayerNorm2d(stage.max_width)
        self.blocks = nn.ModuleList(
            ElasticHybridBlock(
                stage.max_width, stage.max_ffn_ratio, space.head_dim, stage.sr_ratio,
                space.operators, space.kernels, sharing,
            )
            for _ in range(stage.max_depth)
        )
        self.norm = ElasticLayerNorm2d(stage.max_width)

    def forward(self, x: Tensor, stage: StageArch) -> Tensor:
        x = self.embed_norm(self.embed(x, stage.width, stride=self.stride))
        for block, block_arch in zip(self.blocks, stage.blocks):
            x = block(x, block_arch)
        return self.norm(x)

    def extract(self, in_ch: int, stage: StageArch) -> Stage:
        c = stage.width
        return Stage(
            self.embed.extract(in_ch, c, stride=self.stride),
            self.embed_norm.extract(c),
            [block.extract(c, b) for block, b in zip(self.blocks, stage.blocks)],
            self.norm.extract(c),
        )


class HybridSupernet(nn.Module):
    def __init__(self, space: SearchSpace, num_classes: int, sharing: str = "cross") -> None:
        super().__init__()
        if sharing not in SHARING_MODES:
            raise ValueError(f"sharing must be one of {', '.join(SHARING_MODES)}, got {sharing!r}")
        self.space, self.num_classes, self.sharing = space, num_classes, sharing
        stages, max_in = [], space.in_chans
        for i, stage_space in enumerate(space.stages):
            stages.append(ElasticStage(i, max_in, space, stage_space, sharing))
            max_in = stage_space.max_width
        self.stages = nn.ModuleList(stages)
        self.decoder = ElasticMFAM(
            space.max_widths, space.decoder_channels, num_classes, space.edge_ops,
            space.num_pool_branches, sharing, detail_channels=space.detail_channels, in_chans=space.in_chans,
        )
        self.active_arch: Arch = space.largest()

    def set_active(self, arch: Arch) -> None:
        """Select the subnet that a plain ``forward(x)`` runs (e.g. under DDP)."""
        self.active_arch = self.space.validate(arch)

    def sample(self, rng: random.Random, prior: ChoicePrior | None = None) -> Arch:
        return self.space.sample(rng, prior)

    def features(self, x: Tensor, arch: Arch) -> list[Tensor]:
        feats = []
        for stage, stage_arch in zip(self.stages, arch.stages):
            x = stage(x, stage_arch)
            feats.append(x)
        return feats

    def forward(self, x: Tensor, arch: Arch | None = None) -> Tensor:
        arch = arch if arch is not None else self.active_arch
        return self.decoder(self.features(x, arch), arch.edges, arch.pool_sizes, x)

    @torch.no_grad()
    def extract(self, arch: Arch) -> SegmentationNet:
        """The subnet `arch` as a plain static network with copies of the inherited weights."""
        self.space.validate(arch)
        stages, in_ch = [], self.space.in_chans
        for stage, stage_arch in zip(self.stages, arch.stages):
            stages.append(stage.extract(in_ch, stage_arch))
            in_ch = stage_arch.width
        decoder = self.decoder.extract(arch.widths, arch.edges, arch.pool_sizes)
        net = SegmentationNet(stages, decoder, arch, self.num_classes)
        return net.train(self.training)

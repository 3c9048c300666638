"""EfficientDet: EfficientNet backbone -> BiFPN cells -> box and class heads.

`EfficientDet(config).state_dict()` has exactly the keys and shapes of zylo117's
EfficientDetBackbone, so its checkpoints load strictly and unchanged.
"""

from __future__ import annotations

from torch import Tensor, nn

from .backbone import EfficientNetBackbone
from .bifpn import BiFPN
from .config import EfficientDetConfig
from .heads import Classifier, Regressor


class EfficientDet(nn.Module):
    """forward(x (B, 3, H, W)) -> (regression (B, A, 4), classification (B, A, num_classes))."""

    def __init__(self, config: EfficientDetConfig) -> None:
        super().__init__()
        self.config = config
        use_p8 = config.max_level == 8
        num_levels = len(config.pyramid_levels)
        # Attribute order mirrors zylo117 (bifpn, regressor, classifier, backbone_net).
        self.bifpn = nn.Sequential(
            *(
                BiFPN(
                    config.fpn_channels,
                    config.backbone_channels,
                    first_time=i == 0,
                    attention=config.fast_attention,
                    use_p8=use_p8,
                )
                for i in range(config.fpn_repeats)
            )
        )
        self.regressor = Regressor(config.fpn_channels, config.num_anchors, config.head_repeats, num_levels)
        self.classifier = Classifier(
            config.fpn_channels, config.num_anchors, config.num_classes, config.head_repeats, num_levels
        )
        # Random init as zylo117's training starts: class prior 0.01, so a fresh (demo)
        # model does not score every anchor at ~0.5 and drown NMS in 49k boxes.
        self.classifier.init_prior()
        self.backbone_net = EfficientNetBackbone(config.backbone)
        self.batchnorm_fused = False

    def fuse_batchnorm(self) -> "EfficientDet":
        """Fold every BatchNorm into the conv before it, for inference; returns self.

        Outputs stay equal up to float rounding and the forward is about 20% faster on
        CPU, but the state_dict no longer has zylo117's layout: load weights first, and
        never save a fused model as a checkpoint.
        """
        if self.batchnorm_fused:
            return self
        self.eval()
        self.backbone_net.fuse_batchnorm()
        for cell in self.bifpn:
            cell.fuse_batchnorm()
        self.regressor.fuse_batchnorm()
        self.classifier.fuse_batchnorm()
        self.batchnorm_fused = True
        return self

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.bifpn(self.backbone_net(x))
        return self.regressor(features), self.classifier(features)

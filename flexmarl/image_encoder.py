"""A small CNN for image observations, chosen by `model.encoder` (auto: for every 3-D Box observation).

Why not flatten: a 280x480x3 image flattened into a 64-unit MLP layer is 26M weights per network (a 610 MB
checkpoint with Adam's moments) and a few env steps/s. Here the parameter count does not depend on the image
size: strided convolutions, then adaptive average pooling to a 4x4 grid, so the encoder has ~20k weights and
its output is 512 features whatever the resolution.

Two stacks by image size (after average-pooling frames larger than ~2x84 pixels by an integer factor): large images (shorter side >= 36, e.g. Atari's 84x84 or camera frames) use the
Nature-DQN kernel/stride pattern (8/4, 4/2, 3/1) with fewer channels, which cuts the resolution by ~8x
before the expensive layers; small grids (MiniGrid's 7x7, board games) use 3x3 stride-1 convolutions that
keep every cell.
"""

from __future__ import annotations

import torch
from torch import nn

from envs.spec import ImageSpec

POOLED = 4
"""Side of the pooled feature grid."""
TARGET_SIDE = 84
"""Images whose shorter side is at least twice this are average-pooled by an integer factor towards it."""


def _conv(c_in: int, c_out: int, kernel: int, stride: int, padding: int = 0) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, kernel, stride, padding)
    nn.init.orthogonal_(conv.weight, gain=nn.init.calculate_gain("relu"))
    nn.init.zeros_(conv.bias)
    return conv


class ImageEncoder(nn.Module):
    """Flat image vectors [N, frames * H * W * C] -> features [N, out_dim]."""

    def __init__(self, image: ImageSpec):
        super().__init__()
        self.image = image
        c_in = image.frames * image.channels
        side = min(image.height, image.width)
        # Camera-sized frames are average-pooled towards ~84 pixels first (Atari pipelines resize to 84x84):
        # a 280x480 frame costs ~9x less per convolution and the policy sees the same layout.
        pool = max(1, side // TARGET_SIDE)
        stem: list[nn.Module] = [nn.AvgPool2d(pool)] if pool > 1 else []
        if side // pool >= 36:
            convs = [_conv(c_in, 16, 8, 4), nn.ReLU(), _conv(16, 32, 4, 2), nn.ReLU(), _conv(32, 32, 3, 1), nn.ReLU()]
        else:
            convs = [_conv(c_in, 16, 3, 1, 1), nn.ReLU(), _conv(16, 32, 3, 1, 1), nn.ReLU()]
        self.net = nn.Sequential(*stem, *convs, nn.AdaptiveAvgPool2d(POOLED), nn.Flatten())
        self.out_dim = 32 * POOLED * POOLED

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """[N, D] in the env's layout -> [N, frames * C, H, W], scaled to about [0, 1] for pixels."""
        im, n = self.image, x.shape[0]
        if im.channels_last:
            x = x.reshape(n, im.frames, im.height, im.width, im.channels).permute(0, 1, 4, 2, 3)
        else:
            x = x.reshape(n, im.frames, im.channels, im.height, im.width)
        return x.reshape(n, im.frames * im.channels, im.height, im.width) / im.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.to_images(x))

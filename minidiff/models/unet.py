"""The DDPM noise-prediction U-Net eps_theta(x_t, t) (docs/training.md §5).

    e     = MLP(sinusoidal(t)) [+ Embedding(y)]                   time (+ label) embedding, (B, 4C), in x's dtype
    h     = Conv3x3(x_t)                                         (B, C, H, W)
    down: per level l (channels C m_l): num_res_blocks ResBlocks (+ attention at the listed
          resolutions), keep h as a skip, then a stride-2 Conv3x3 (all but the last level)
    mid:  ResBlock, SelfAttention2d, ResBlock                    at the lowest resolution
    up:   per level, last to first: concatenate the skip, ResBlocks (+ attention), then a
          ConvTranspose2d(4x4, stride 2) up (all but the first level)
    out   = Conv3x3(SiLU∘GroupNorm(h))                           zero-initialised, so eps_hat = 0 at start

Class conditioning (num_classes = K > 0): a learned embedding of the label y in 0..K is added to the
time embedding; index K is the null label (no class), on which the classifier-free guided model is
also trained (docs/guidance_variance.md §1). out_channels (default in_channels): 2 C_img for a
learned reverse variance (the extra channels carry v, docs/guidance_variance.md §2).

ResBlock(x, e) = skip(x) + Conv3x3(Dropout(SiLU∘GN(Conv3x3(SiLU∘GN(x)) + Linear(SiLU(e)))))
with skip a 1x1 conv when the channel count changes (the DDPM / improved-diffusion block).
GroupNorm uses gcd(groups, channels) groups, so any channel count works. Every SiLU∘GN above
(norm1, norm2, norm_out) is one nn.GroupNormSiLU (docs/layers.md eq. M25): a GroupNorm module, same
parameters and state-dict keys, that applies the SiLU too and keeps only x and the group statistics for
backward. The attention block's GroupNorm has no SiLU after it and stays a plain GroupNorm.
"""
import math

from minidiff import checks, nn, ops
from minidiff.autograd import Tensor, unwrap
from minidiff.nn import init


class ResBlock(nn.Module):
    """Two SiLU∘GroupNorm -> Conv3x3 stages with the projected time embedding added in between."""

    def __init__(self, c_in, c_out, emb_dim, dropout=0.0, groups=8, dtype=None, eps=1e-5):
        super().__init__()
        self.norm1 = nn.GroupNormSiLU(math.gcd(groups, c_in), c_in, eps, dtype=dtype)     # SiLU∘GroupNorm
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, dtype=dtype)
        self.emb = nn.Linear(emb_dim, c_out, dtype=dtype)
        self.norm2 = nn.GroupNormSiLU(math.gcd(groups, c_out), c_out, eps, dtype=dtype)  # SiLU∘GroupNorm
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, dtype=dtype)
        self.skip = nn.Conv2d(c_in, c_out, 1, dtype=dtype) if c_in != c_out else nn.Identity()

    def forward(self, x, e):
        B = x.shape[0]
        h = self.conv1(self.norm1(x))                                      # (B, c_out, H, W)
        h = ops.add(h, ops.reshape(self.emb(ops.silu(e)), (B, -1, 1, 1)))  # + time embedding per channel
        h = self.conv2(self.dropout(self.norm2(h)))
        return ops.add(self.skip(x), h)


class Level(nn.Module):
    """ResBlocks of one resolution, each optionally followed by self-attention."""

    def __init__(self, c_in, c_out, n_blocks, emb_dim, attention, dropout, groups, heads, dtype):
        super().__init__()
        self.blocks = nn.ModuleList([ResBlock(c_in if i == 0 else c_out, c_out, emb_dim, dropout, groups, dtype)
                                     for i in range(n_blocks)])
        self.attn = nn.ModuleList([nn.SelfAttention2d(c_out, heads, math.gcd(groups, c_out), dtype=dtype)
                                   for _ in range(n_blocks)]) if attention else None

    def forward(self, h, e):
        for i, block in enumerate(self.blocks):
            h = block(h, e)
            if self.attn is not None:
                h = self.attn[i](h)
        return h


class UNet(nn.Module):
    """eps_theta(x_t, t[, y]): (B, C_img, H, W), (B,)[, (B,)] -> (B, out_channels, H, W).

    H, W divisible by 2^(levels-1); y (labels 0..num_classes, num_classes = the null label) is required
    exactly when num_classes > 0.
    """

    def __init__(self, in_channels=1, image_size=8, base_channels=32, channel_mults=(1, 2), num_res_blocks=1,
                 attention_resolutions=(4,), dropout=0.1, groups=8, heads=1, num_classes=0, out_channels=None,
                 dtype=None):
        super().__init__()
        self.config = dict(in_channels=in_channels, image_size=image_size, base_channels=base_channels,
                           channel_mults=tuple(channel_mults), num_res_blocks=num_res_blocks,
                           attention_resolutions=tuple(attention_resolutions), dropout=dropout, groups=groups,
                           heads=heads)                  # the constructor arguments, for mirrors and exports
        # the two extensions enter the config only when used: the PyTorch mirror (interop/torch_unet.py)
        # has neither and refuses such a config by its unexpected argument
        self.num_classes = checks.integer("num_classes", num_classes, minimum=0, where="UNet")
        self.out_channels = in_channels if out_channels is None else checks.integer(
            "out_channels", out_channels, minimum=1, where="UNet")
        self.config.update({"num_classes": self.num_classes} if self.num_classes else {},
                           **({"out_channels": self.out_channels} if self.out_channels != in_channels else {}))
        self.in_channels, self.image_size = in_channels, image_size
        if image_size % 2 ** (len(channel_mults) - 1):
            raise ValueError(f"UNet: image size {image_size} must be divisible by 2^{len(channel_mults) - 1} "
                             f"for {len(channel_mults)} levels")
        C, emb = base_channels, 4 * base_channels
        self.base_channels = C
        self.time_embedding = nn.Sequential(nn.Linear(C, emb, dtype=dtype), nn.SiLU(), nn.Linear(emb, emb, dtype=dtype))
        if self.num_classes:                             # rows 0..K-1: the classes, row K: the null label
            self.label_embedding = nn.Embedding(self.num_classes + 1, emb, dtype=dtype)
        self.conv_in = nn.Conv2d(in_channels, C, 3, padding=1, dtype=dtype)
        chans = [C * m for m in channel_mults]
        sizes = [image_size // 2 ** i for i in range(len(chans))]
        args = dict(emb_dim=emb, dropout=dropout, groups=groups, heads=heads, dtype=dtype)
        self.down = nn.ModuleList([Level(C if i == 0 else chans[i - 1], c, num_res_blocks,
                                         attention=sizes[i] in attention_resolutions, **args)
                                   for i, c in enumerate(chans)])
        self.downsample = nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1, dtype=dtype) for c in chans[:-1]])
        self.mid1 = ResBlock(chans[-1], chans[-1], emb, dropout, groups, dtype)
        self.mid_attn = nn.SelfAttention2d(chans[-1], heads, math.gcd(groups, chans[-1]), dtype=dtype)
        self.mid2 = ResBlock(chans[-1], chans[-1], emb, dropout, groups, dtype)
        ups = []
        for i in reversed(range(len(chans))):
            c_in = (chans[-1] if i == len(chans) - 1 else chans[i + 1]) + chans[i]  # h + skip
            ups.append(Level(c_in, chans[i], num_res_blocks, attention=sizes[i] in attention_resolutions, **args))
        self.up = nn.ModuleList(ups)
        self.upsample = nn.ModuleList([nn.ConvTranspose2d(c, c, 4, stride=2, padding=1, dtype=dtype)
                                       for c in reversed(chans[1:])])
        self.norm_out = nn.GroupNormSiLU(math.gcd(groups, C), C, dtype=dtype)             # SiLU∘GroupNorm
        self.conv_out = nn.Conv2d(C, self.out_channels, 3, padding=1, dtype=dtype)
        init.zeros_(self.conv_out.weight)
        init.zeros_(self.conv_out.bias)

    def forward(self, x, t, y=None):
        if len(x.shape) != 4 or x.shape[1] != self.in_channels or x.shape[2] % 2 ** (len(self.down) - 1):
            raise ValueError(f"UNet: input shape {tuple(x.shape)} must be (B, {self.in_channels}, H, W) with H, W "
                             f"divisible by {2 ** (len(self.down) - 1)}")
        if len(t.shape) != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"UNet: timesteps shape {tuple(t.shape)} must be ({x.shape[0]},)")
        x = x if isinstance(x, Tensor) else Tensor(x)
        t = unwrap(t)
        e = self.time_embedding(Tensor(nn.sinusoidal_embedding(t, self.base_channels, dtype=x.dtype)))  # (B, 4C)
        if self.num_classes:
            e = ops.add(e, self.label_embedding(self._labels(y, x.shape[0])))
        elif y is not None:
            raise ValueError("UNet: labels y given to an unconditional U-Net (num_classes = 0)")
        h, skips = self.conv_in(x), []
        for i, level in enumerate(self.down):
            h = level(h, e)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid2(self.mid_attn(self.mid1(h, e)), e)
        for k, level in enumerate(self.up):
            h = level(ops.concatenate([h, skips.pop()], axis=1), e)
            if k < len(self.upsample):
                h = self.upsample[k](h)
        return self.conv_out(self.norm_out(h))

    def _labels(self, y, B):
        """y as a (B,) integer array in 0..num_classes (num_classes: the null label), or a clear error."""
        if y is None:
            raise ValueError(f"UNet: a class-conditional U-Net needs labels y (0..{self.num_classes - 1}, "
                             f"or {self.num_classes} for none)")
        y = unwrap(y)
        checks.shape("y", y, (B,), "UNet", because=" (one label per image)")
        if y.dtype.kind not in "iu" or (B and not 0 <= int(y.min()) <= int(y.max()) <= self.num_classes):
            raise ValueError(f"UNet: labels y must be integers in 0..{self.num_classes} ({self.num_classes}: "
                             f"the null label), got {y.tolist() if B <= 8 else f'dtype {y.dtype}'}")
        return y

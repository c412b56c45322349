"""The teaching U-Net (minidiff.models.unet) written again in plain PyTorch, layer for layer.

Same layers, widths, group counts and parameter names (`state_dict()` keys line up one for one), so
minidiff's weights load unchanged and, in float64, both compute the same function to rounding:

    e   = MLP(sinusoidal(t))        h = Conv3x3(x)      down (ResBlocks [+ attention], stride-2 conv)
    mid = ResBlock, SelfAttention2d, ResBlock           up (concat skip, ResBlocks [+ attention], ConvT 4x4/2)
    out = Conv3x3(SiLU(GroupNorm(h)))

See minidiff/models/unet.py for the equations; this file only restates them with torch.nn. It is the
PyTorch side of benchmarks/train_step.py and the plain-PyTorch export of a trained model:

    net = torch_unet_from(model)            # torch.nn.Module, weights copied, model's dtype
    eps_hat = net(x_t, t)                   # x_t (B, C, H, W) tensor, t (B,) integer tensor

Importing this module needs PyTorch; `import minidiff` does not.
"""
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["TorchUNet", "torch_unet_from", "unet_config", "copy_weights", "sinusoidal_embedding"]


def sinusoidal_embedding(t, embedding_dim, max_period=10000.0, dtype=torch.float32):
    """e(t) = [sin(t ω_i)]_i ++ [cos(t ω_i)]_i, ω_i = P^(−i/h), h = ⌊dim/2⌋, computed in float64 (docs/layers.md §7)."""
    a = t.to(torch.float64)
    half = embedding_dim // 2
    omega = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64, device=t.device) / half)
    args = a[:, None] * omega[None, :]
    parts = [torch.sin(args), torch.cos(args)]
    if embedding_dim % 2:
        parts.append(torch.zeros((len(a), 1), dtype=torch.float64, device=t.device))
    return torch.cat(parts, dim=1).to(dtype)


class SelfAttention2d(nn.Module):
    """y = x + Proj(MHA(GroupNorm(x))) over the H·W positions (minidiff.nn.SelfAttention2d)."""

    def __init__(self, channels, num_heads, num_groups, eps=1e-5):
        super().__init__()
        self.channels, self.num_heads = channels, num_heads
        self.norm = nn.GroupNorm(num_groups, channels, eps) if num_groups else None
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x):
        B, C, H, W = x.shape
        heads, d = self.num_heads, C // self.num_heads
        h = x if self.norm is None else self.norm(x)
        tokens = h.reshape(B, C, H * W).transpose(1, 2)                                   # (B, N, C)
        q, k, v = self.qkv(tokens).reshape(B, H * W, 3, heads, d).permute(2, 0, 3, 1, 4)  # 3 x (B, heads, N, d)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, H * W, C)
        return x + self.proj(o).transpose(1, 2).reshape(B, C, H, W)


class ResBlock(nn.Module):
    """skip(x) + Conv3x3(Dropout(SiLU(GN(Conv3x3(SiLU(GN(x))) + Linear(SiLU(e))))))."""

    def __init__(self, c_in, c_out, emb_dim, dropout, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(math.gcd(groups, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(math.gcd(groups, c_out), c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, e):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(e))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Level(nn.Module):
    def __init__(self, c_in, c_out, n_blocks, emb_dim, attention, dropout, groups, heads):
        super().__init__()
        self.blocks = nn.ModuleList([ResBlock(c_in if i == 0 else c_out, c_out, emb_dim, dropout, groups)
                                     for i in range(n_blocks)])
        self.attn = nn.ModuleList([SelfAttention2d(c_out, heads, math.gcd(groups, c_out))
                                   for _ in range(n_blocks)]) if attention else None

    def forward(self, h, e):
        for i, block in enumerate(self.blocks):
            h = block(h, e)
            if self.attn is not None:
                h = self.attn[i](h)
        return h


class TorchUNet(nn.Module):
    """eps_theta(x_t, t) with minidiff.models.UNet's constructor arguments and parameter names."""

    def __init__(self, in_channels=1, image_size=8, base_channels=32, channel_mults=(1, 2), num_res_blocks=1,
                 attention_resolutions=(4,), dropout=0.1, groups=8, heads=1):
        super().__init__()
        C, emb = base_channels, 4 * base_channels
        self.in_channels, self.image_size, self.base_channels = in_channels, image_size, C
        self.time_embedding = nn.Sequential(nn.Linear(C, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.conv_in = nn.Conv2d(in_channels, C, 3, padding=1)
        chans = [C * m for m in channel_mults]
        sizes = [image_size // 2 ** i for i in range(len(chans))]
        args = dict(emb_dim=emb, dropout=dropout, groups=groups, heads=heads)
        self.down = nn.ModuleList([Level(C if i == 0 else chans[i - 1], c, num_res_blocks,
                                         attention=sizes[i] in attention_resolutions, **args)
                                   for i, c in enumerate(chans)])
        self.downsample = nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1) for c in chans[:-1]])
        self.mid1 = ResBlock(chans[-1], chans[-1], emb, dropout, groups)
        self.mid_attn = SelfAttention2d(chans[-1], heads, math.gcd(groups, chans[-1]))
        self.mid2 = ResBlock(chans[-1], chans[-1], emb, dropout, groups)
        ups = []
        for i in reversed(range(len(chans))):
            c_in = (chans[-1] if i == len(chans) - 1 else chans[i + 1]) + chans[i]
            ups.append(Level(c_in, chans[i], num_res_blocks, attention=sizes[i] in attention_resolutions, **args))
        self.up = nn.ModuleList(ups)
        self.upsample = nn.ModuleList([nn.ConvTranspose2d(c, c, 4, stride=2, padding=1) for c in reversed(chans[1:])])
        self.norm_out = nn.GroupNorm(math.gcd(groups, C), C)
        self.conv_out = nn.Conv2d(C, in_channels, 3, padding=1)

    def forward(self, x, t):
        e = self.time_embedding(sinusoidal_embedding(t, self.base_channels, dtype=x.dtype))
        h, skips = self.conv_in(x), []
        for i, level in enumerate(self.down):
            h = level(h, e)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid2(self.mid_attn(self.mid1(h, e)), e)
        for k, level in enumerate(self.up):
            h = level(torch.cat([h, skips.pop()], dim=1), e)
            if k < len(self.upsample):
                h = self.upsample[k](h)
        return self.conv_out(F.silu(self.norm_out(h)))


def unet_config(model):
    """The constructor arguments of a minidiff UNet (or of a model holding one as `.unet`)."""
    unet = getattr(model, "unet", model)
    if not hasattr(unet, "config"):
        raise TypeError(f"unet_config: expected a minidiff UNet or a model with a .unet, got {type(model).__name__}")
    return {k: v for k, v in unet.config.items() if k != "dtype"}


def copy_weights(net, model):
    """Copy every parameter of minidiff `model` into torch `net` (same names and shapes); returns net."""
    unet = getattr(model, "unet", model)
    state = {k: torch.from_numpy(np.array(v)) for k, v in unet.state_dict().items()}
    dtype = next(iter(state.values())).dtype
    net.to(dtype).load_state_dict(state, strict=True)
    return net


def torch_unet_from(model):
    """A TorchUNet with `model`'s architecture, dtype and weights (a minidiff UNet or a model with `.unet`).

    The copy keeps minidiff's train/eval mode; dropout draws its own masks, so compare outputs in eval().
    """
    net = copy_weights(TorchUNet(**unet_config(model)), model)
    return net.train(getattr(model, "unet", model).training)

"""The U-Net in the layout of diffusers' UNet2DModel, built from the teaching U-Net's blocks (docs/interop.md §2).

The same equations as minidiff.models.unet (ResBlock, SelfAttention2d), arranged as diffusers arranges
them, so that a UNet2DModel's state dict maps onto this module one tensor for one tensor:

    e     = Linear_2(SiLU(Linear_1(sinusoidal(t; flip_sin_to_cos, freq_shift))))   time_embedding, (B, E)
            [+ Embedding(class_labels)]                                             class_embedding (optional)
    h     = conv_in(x_t)                                                            skips = [h]
    down: block b (channels C_b) = layers_per_block ResBlocks, each followed by self-attention in an
          AttnDownBlock2D, each output kept as a skip; then (all but the last block) a stride-2 Conv3x3
          (downsample_padding 1, or 0 with one zero row and column after, as diffusers) kept as a skip too
    mid:  ResBlock, SelfAttention2d (unless add_attention is False), ResBlock
    up:   block b, last to first: layers_per_block + 1 ResBlocks, each on concat(h, skips.pop()) and
          followed by self-attention in an AttnUpBlock2D; then (all but the last) nearest x2 + Conv3x3
    out   = conv_out(SiLU(conv_norm_out(h)))                                      one nn.GroupNormSiLU

E = time_embedding_dim or 4 C_0. Attention has C / attention_head_dim heads (one head when
attention_head_dim is None), its GroupNorm uses norm_num_groups groups (attn_norm_num_groups in the
mid block if given) and norm_eps. The constructor takes UNet2DModel's own argument names; values this
module does not implement are refused by name (`UNSUPPORTED`).

Timesteps: minidiff's t runs 1..T (t = 1 is the first noising step) and diffusers' 0..T-1; the network
sees diffusers' t_d = t - 1 (`diffusers_timestep`, the one place the shift is made), so a model moves
between the two without retraining, and alphas_cumprod[t_d] in diffusers is alpha_bar_t here.

The sinusoidal features are computed in float64 here; diffusers computes them in float32 whatever the
model's dtype, so a float64 comparison with diffusers must give both the same features (tests/test_interop.py).
"""
from minidiff import functional as F
from minidiff import nn, ops
from minidiff.autograd import Tensor, unwrap
from minidiff.models.unet import ResBlock

DOWN_BLOCKS = {"DownBlock2D": False, "AttnDownBlock2D": True}   # block type -> has attention
UP_BLOCKS = {"UpBlock2D": False, "AttnUpBlock2D": True}
# UNet2DModel arguments with the only values implemented here.
UNSUPPORTED = {"time_embedding_type": ("positional",), "resnet_time_scale_shift": ("default",),
               "downsample_type": ("conv",), "upsample_type": ("conv",), "act_fn": ("silu", "swish"),
               "class_embed_type": (None,), "mid_block_type": ("UNetMidBlock2D", None),
               "mid_block_scale_factor": (1, 1.0), "downsample_padding": (0, 1)}


def check_supported(config):
    """Refuse a UNet2DModel config value this module does not implement, naming the key and the value."""
    for key, allowed in UNSUPPORTED.items():
        if key in config and config[key] not in allowed:
            raise ValueError(f"diffusers UNet2DModel config: {key}={config[key]!r} is not supported "
                             f"(supported: {list(allowed)})")
    for key, kinds in (("down_block_types", DOWN_BLOCKS), ("up_block_types", UP_BLOCKS)):
        for kind in config.get(key, ()):
            if kind not in kinds:
                raise ValueError(f"diffusers UNet2DModel config: {key} entry {kind!r} is not supported "
                                 f"(supported: {sorted(kinds)})")


def diffusers_timestep(t):
    """diffusers' 0-based timestep of minidiff's 1-based t: t_d = t - 1 (its alphas_cumprod[t_d] = alpha_bar_t)."""
    return t - 1


def minidiff_timestep(t_d):
    """minidiff's 1-based timestep of diffusers' t_d: t = t_d + 1 (the inverse of `diffusers_timestep`)."""
    return t_d + 1


class TimestepEmbedding(nn.Module):
    """e = Linear_2(SiLU(Linear_1(features))): diffusers' TimestepEmbedding (names linear_1, linear_2)."""

    def __init__(self, in_features, dim, dtype=None):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, dim, dtype=dtype)
        self.linear_2 = nn.Linear(dim, dim, dtype=dtype)

    def forward(self, features):
        return self.linear_2(ops.silu(self.linear_1(features)))


class Downsample(nn.Module):
    """Stride-2 Conv3x3; with padding 0 the input first gets one zero row and column after (diffusers' Downsample2D)."""

    def __init__(self, channels, padding, dtype=None):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding, dtype=dtype)

    def forward(self, h):
        return self.conv(h if self.padding else ops.pad(h, ((0, 0), (0, 0), (0, 1), (0, 1))))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then Conv3x3 (diffusers' Upsample2D with use_conv)."""

    def __init__(self, channels, dtype=None):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, dtype=dtype)

    def forward(self, h):
        return self.conv(F.interpolate(h, scale_factor=2))


class Block(nn.Module):
    """One resolution of the down or up path: ResBlocks (resnets), optional attentions, an optional resampler.

    forward(h, e, skips): the up path (`skips` given) concatenates skips.pop() before each ResBlock; the down
    path returns each ResBlock[+attention] output (and the resampled h) as new skips.
    """

    def __init__(self, in_channels, out_channels, n_resnets, attention, sampler, args, skip_channels=()):
        super().__init__()
        self.resnets = nn.ModuleList([ResBlock((in_channels if i == 0 else out_channels)
                                               + (skip_channels[i] if skip_channels else 0), out_channels, **args)
                                      for i in range(n_resnets)])
        if attention:
            self.attentions = nn.ModuleList([attention(out_channels) for _ in range(n_resnets)])
        self.has_attention = bool(attention)
        self.sampler_name = "upsamplers" if skip_channels else "downsamplers"   # diffusers' attribute names
        if sampler is not None:
            setattr(self, self.sampler_name, nn.ModuleList([sampler]))

    def forward(self, h, e, skips=None):
        outputs = []
        for i, resnet in enumerate(self.resnets):
            h = resnet(h if skips is None else ops.concatenate([h, skips.pop()], axis=1), e)
            h = self.attentions[i](h) if self.has_attention else h
            outputs.append(h)
        for sampler in getattr(self, self.sampler_name, ()):
            h = sampler(h)
            outputs.append(h)
        return h, outputs


class MidBlock(nn.Module):
    """ResBlock, SelfAttention2d (if any), ResBlock at the lowest resolution (diffusers' UNetMidBlock2D)."""

    def __init__(self, channels, attention, args):
        super().__init__()
        self.resnets = nn.ModuleList([ResBlock(channels, channels, **args) for _ in range(2)])
        if attention:
            self.attentions = nn.ModuleList([attention(channels)])
        self.has_attention = bool(attention)

    def forward(self, h, e):
        h = self.resnets[0](h, e)
        h = self.attentions[0](h) if self.has_attention else h
        return self.resnets[1](h, e)


class DiffusersUNet(nn.Module):
    """eps_theta(x_t, t[, class_labels]) in UNet2DModel's layout: (B, C_in, H, W), (B,) -> (B, C_out, H, W).

    t: minidiff's 1-based timesteps; the time embedding reads diffusers' t_d = t - 1 (`diffusers_timestep`).
    """

    def __init__(self, sample_size=None, in_channels=3, out_channels=3, center_input_sample=False,
                 time_embedding_type="positional", time_embedding_dim=None, freq_shift=0, flip_sin_to_cos=True,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                 mid_block_type="UNetMidBlock2D",
                 up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                 block_out_channels=(224, 448, 672, 896), layers_per_block=2, mid_block_scale_factor=1,
                 downsample_padding=1, downsample_type="conv", upsample_type="conv", dropout=0.0, act_fn="silu",
                 attention_head_dim=8, norm_num_groups=32, attn_norm_num_groups=None, norm_eps=1e-5,
                 resnet_time_scale_shift="default", add_attention=True, class_embed_type=None,
                 num_class_embeds=None, num_train_timesteps=None, dtype=None):
        super().__init__()
        self.config = {k: v for k, v in locals().items() if k not in ("self", "dtype", "__class__")}  # for export
        check_supported(dict(time_embedding_type=time_embedding_type, resnet_time_scale_shift=resnet_time_scale_shift,
                             downsample_type=downsample_type, upsample_type=upsample_type, act_fn=act_fn,
                             class_embed_type=class_embed_type, mid_block_type=mid_block_type,
                             mid_block_scale_factor=mid_block_scale_factor, downsample_padding=downsample_padding,
                             down_block_types=down_block_types, up_block_types=up_block_types))
        chans = list(block_out_channels)
        if not len(down_block_types) == len(up_block_types) == len(chans):
            raise ValueError(f"DiffusersUNet: down_block_types, up_block_types and block_out_channels need one entry "
                             f"per resolution, got {len(down_block_types)}, {len(up_block_types)}, {len(chans)}")
        if any(c % norm_num_groups for c in chans):
            raise ValueError(f"DiffusersUNet: norm_num_groups={norm_num_groups} must divide every block_out_channels "
                             f"entry, got {chans}")
        self.in_channels, self.out_channels, self.center_input_sample = in_channels, out_channels, center_input_sample
        self.freq_shift, self.flip_sin_to_cos, self.num_class_embeds = freq_shift, flip_sin_to_cos, num_class_embeds
        if attention_head_dim is not None and any(c % attention_head_dim for c in chans):
            raise ValueError(f"DiffusersUNet: attention_head_dim={attention_head_dim} must divide every "
                             f"block_out_channels entry, got {chans}")
        self.levels, self.feature_dim = len(chans), chans[0]
        emb = time_embedding_dim or 4 * chans[0]
        args = dict(emb_dim=emb, dropout=dropout, groups=norm_num_groups, dtype=dtype, eps=norm_eps)

        def attention(groups):
            return lambda c: nn.SelfAttention2d(c, 1 if attention_head_dim is None else c // attention_head_dim,
                                                groups, norm_eps, dtype=dtype)

        self.conv_in = nn.Conv2d(in_channels, chans[0], 3, padding=1, dtype=dtype)
        self.time_embedding = TimestepEmbedding(chans[0], emb, dtype)
        if num_class_embeds is not None:
            self.class_embedding = nn.Embedding(num_class_embeds, emb, dtype=dtype)
        last = len(chans) - 1
        self.down_blocks = nn.ModuleList([
            Block(chans[max(i - 1, 0)], c, layers_per_block, DOWN_BLOCKS[kind] and attention(norm_num_groups),
                  Downsample(c, downsample_padding, dtype) if i < last else None, args)
            for i, (kind, c) in enumerate(zip(down_block_types, chans))])
        if mid_block_type is not None:
            self.mid_block = MidBlock(chans[-1], add_attention and attention(attn_norm_num_groups or norm_num_groups),
                                      args)
        self.has_mid_block = mid_block_type is not None
        skip_channels = [chans[0]] + [c for i, c in enumerate(chans) for _ in range(layers_per_block + (i < last))]
        ups = []
        for k, (kind, c) in enumerate(zip(up_block_types, reversed(chans))):
            n = layers_per_block + 1
            skips, skip_channels = skip_channels[-n:][::-1], skip_channels[:-n]     # popped last-in first
            ups.append(Block(chans[last - max(k - 1, 0)], c, n, UP_BLOCKS[kind] and attention(norm_num_groups),
                             Upsample(c, dtype) if k < last else None, args, skip_channels=skips))
        self.up_blocks = nn.ModuleList(ups)
        self.conv_norm_out = nn.GroupNormSiLU(norm_num_groups, chans[0], norm_eps, dtype=dtype)  # SiLU∘GroupNorm
        self.conv_out = nn.Conv2d(chans[0], out_channels, 3, padding=1, dtype=dtype)

    def embedding(self, t, class_labels, dtype):
        """e (B, E): the time embedding of diffusers' t_d = t - 1, plus the class embedding when the model has one."""
        features = nn.sinusoidal_embedding(diffusers_timestep(t), self.feature_dim, dtype=dtype,
                                           freq_shift=self.freq_shift, flip_sin_to_cos=self.flip_sin_to_cos)
        e = self.time_embedding(Tensor(features))
        if self.num_class_embeds is None:
            if class_labels is not None:
                raise ValueError("DiffusersUNet: class_labels given to a model without a class embedding "
                                 "(num_class_embeds is None)")
            return e
        if class_labels is None:
            raise ValueError(f"DiffusersUNet: this model has num_class_embeds={self.num_class_embeds}; "
                             "pass class_labels (B,)")
        return ops.add(e, self.class_embedding(unwrap(class_labels)))

    def forward(self, x, t, class_labels=None):
        factor = 2 ** (self.levels - 1)
        if len(x.shape) != 4 or x.shape[1] != self.in_channels or x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"DiffusersUNet: input shape {tuple(x.shape)} must be (B, {self.in_channels}, H, W) "
                             f"with H, W divisible by {factor}")
        t = unwrap(t)
        if len(t.shape) != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"DiffusersUNet: timesteps shape {tuple(t.shape)} must be ({x.shape[0]},)")
        x = x if isinstance(x, Tensor) else Tensor(x)
        if self.center_input_sample:
            x = ops.sub(ops.mul(x, 2.0), 1.0)
        e = self.embedding(t, class_labels, x.dtype)
        h = self.conv_in(x)
        skips = [h]
        for block in self.down_blocks:
            h, outputs = block(h, e)
            skips += outputs
        if self.has_mid_block:
            h = self.mid_block(h, e)
        for block in self.up_blocks:
            h, _ = block(h, e, skips)
        return self.conv_out(self.conv_norm_out(h))

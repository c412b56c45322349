"""Neural-network modules on the minidiff autograd, named and laid out as torch.nn (docs/layers.md §6)."""
from minidiff.nn import init
from minidiff.nn.attention import (MultiheadSelfAttention, SelfAttention2d, SinusoidalTimeEmbedding, TransformerBlock,
                                   sinusoidal_embedding)
from minidiff.nn.layers import (GELU, AvgPool2d, Conv2d, ConvTranspose2d, Dropout, Embedding, Flatten, GroupNorm,
                                GroupNormSiLU, LayerNorm, Linear, ReLU, Sigmoid, SiLU, Tanh, Unflatten, Upsample)
from minidiff.nn.module import Identity, Module, ModuleList, Parameter, Sequential

__all__ = ["init", "Module", "Parameter", "Sequential", "ModuleList", "Identity", "Linear", "Conv2d",
           "ConvTranspose2d", "GroupNorm", "GroupNormSiLU", "LayerNorm", "Embedding", "SiLU", "GELU", "ReLU", "Sigmoid",
           "Tanh",
           "Dropout", "Upsample", "AvgPool2d", "Flatten", "Unflatten", "SelfAttention2d", "MultiheadSelfAttention",
           "TransformerBlock",
           "SinusoidalTimeEmbedding", "sinusoidal_embedding"]

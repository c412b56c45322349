"""Bridges to other frameworks. Each submodule imports its framework only when it is imported itself,
so `import minidiff` never needs PyTorch (docs/benchmarks.md: the PyTorch mirror of the U-Net)."""

"""minidiff: a NumPy-first reference implementation of AEs, VAEs and DDPM diffusion."""
from setuptools import find_packages, setup

setup(
    name="minidiff",
    version="0.1.0",
    description="From-scratch autoencoders, VAEs and DDPM diffusion on a NumPy autograd, "
    "with fused Numba/CUDA kernels",
    python_requires=">=3.10",
    packages=find_packages(include=["minidiff", "minidiff.*"]) + ["minidiff.kernels"],
    # kernels/ lives at the top level (it is read on its own) but installs as minidiff.kernels
    package_dir={"minidiff.kernels": "kernels"},
    package_data={"minidiff.kernels": ["*.cu", "*.cuh"]},
    install_requires=[
        "numpy>=1.24",
        "numba>=0.59",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        "scipy>=1.10",
        "threadpoolctl>=3",  # single-threaded BLAS for the many small per-head attention products
        "scikit-learn>=1.2",
        "safetensors>=0.4",  # checkpoints are encoded and decoded by the safetensors library
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6.80", "ruff>=0.4", "diffusers>=0.30"],  # diffusers: the interop oracle
        "gpu": ["cupy-cuda12x", "numba-cuda"],
        "bench": ["threadpoolctl"],
    },
    entry_points={"console_scripts": ["minidiff=minidiff.cli:main"]},
)

"""DDPM diffusion math in paper notation (1-based t, tables of length T+1): docs/forward_process.md.

    schedule.py   Schedule(betas) and its tables; linear/cosine/quadratic/sigmoid; respacing
"""
from minidiff.diffusion.schedule import Schedule, spaced_timesteps

__all__ = ["Schedule", "spaced_timesteps"]

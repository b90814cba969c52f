"""Reinforcement learning: advantages, the clipped policy loss with truncated importance sampling, and the loop."""

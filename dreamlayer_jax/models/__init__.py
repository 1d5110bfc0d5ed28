"""Stable Diffusion's models in flax.nnx (NHWC), loading diffusers-format weights."""

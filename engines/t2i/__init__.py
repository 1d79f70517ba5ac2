"""Text-to-image over any Stable-Diffusion-family diffusers pipeline, with Clockwork."""

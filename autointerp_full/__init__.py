"""AutoInterp Full: explain and score the latents of sparse autoencoders and transcoders."""

__version__ = "0.1.0"

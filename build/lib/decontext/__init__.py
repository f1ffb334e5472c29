"""decontext: protect images from in-context diffusion-transformer editors, and measure the protection."""

__version__ = "0.1.0"

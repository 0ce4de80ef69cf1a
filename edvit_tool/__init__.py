"""edvit-tool: ED-ViT compile-and-deploy toolchain. Imports nothing heavy."""

__version__ = "0.1.0"

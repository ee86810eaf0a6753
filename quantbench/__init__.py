"""quantbench: which quantization should I use for this model, on this machine, for my task?"""

__version__ = "0.1.0"

"""mematte: memory-efficient high-resolution image matting with token routing (MEMatte)."""

__version__ = "0.1.0"

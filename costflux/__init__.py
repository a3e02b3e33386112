"""costflux: real-time cost monitoring and FinOps for LLM inference."""

__version__ = "0.1.0"

"""vldlib: fine-tuning with very large dropout (Zhang & Bottou, arXiv 2403.00946), reproducibly."""

__version__ = "0.1.0"

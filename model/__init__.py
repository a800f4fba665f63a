"""llmctv model: the text-conditioned 3D contouring network of Oh et al. (2024).

Never imports :mod:`service` or :mod:`workers`.
"""

__version__ = "0.1.0"

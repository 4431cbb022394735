"""gmcl: generative memory for continual learning, in JAX and Flax.

Subpackages are imported on demand so that ``import gmcl.losses.replay`` brings
no training machinery with it.
"""

__version__ = "0.1.0"

"""gmcl: generative memory for continual learning, in JAX and Flax.

Subpackages are imported on demand so that ``import gmcl.losses.replay`` brings
no training machinery with it.
"""

import time as _time

__version__ = "0.1.0"
# When this process imported gmcl: a source file changed after it may differ from the code running
# (gmcl.program_cache then keeps no programs).
IMPORTED_AT = _time.time()

"""Pure, keyword-only loss functions returning per-example values; callers reduce.

Import a submodule alone (``from gmcl.losses import replay``) to get a loss with no
training machinery attached.
"""

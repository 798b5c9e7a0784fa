"""Homomorphic-encryption backends: one module per plugin. The private modules beside them
are the CKKS layouts they share (``_ckks_layouts``), the fast packed scorer and its numba
kernels (``_fast_scorer``, ``_fast_kernels``) and the framing of serialised blocks
(``_blocks``)."""

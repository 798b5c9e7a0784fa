"""Homomorphic-encryption backends: one module per plugin. The private modules beside them
are the CKKS layouts they share (``_ckks_layouts``), the fast packed scorer and its numba
kernels (``_fast_scorer``, ``_fast_kernels``), how both cut the scorer's integer constants
into pieces (``_pieces``: the piece width and the accumulator's flush interval, so neither
imports the other) and the framing of serialised blocks (``_blocks``)."""

"""How the fast scorer cuts its integer constants, shared by the scorer (which cuts them)
and its numba kernels (which flush their accumulators in time), so that neither imports
the other for it."""

PIECE_BITS = 22  # constant pieces: a 32-bit residue half times a piece stays below 2^54
PIECE_MASK = (1 << PIECE_BITS) - 1
PIECES = 3  # 66 bits: any |k| below 2^64, so any residue of Z_p and any int64 constant
ACCUMULATORS = 2 * PIECES  # one per (piece, 32-bit half of the residue)
# Terms an accumulator takes before it could overflow 64 bits (1024 at 22-bit pieces).
FLUSH_TERMS = (2**64 - 1) // ((2**32 - 1) * PIECE_MASK)

"""Homomorphic-encryption backends: one module per plugin; the CKKS layouts, the fast packed scorer and its kernels, and the block framing they share are the private modules beside them."""

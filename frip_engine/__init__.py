"""frip-engine: privacy-preserving 1:N face identification over a CKKS-encrypted gallery.

Importing this package loads nothing heavy; plugins and their dependencies load on use.
"""

__version__ = "0.1.0"

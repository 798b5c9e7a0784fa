"""Executors that score the encrypted gallery and encrypt new blocks (``[executor]``)."""

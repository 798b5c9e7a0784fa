"""Clusterers that partition the gallery and route probes; shared code in ``_common``."""

"""Face feature extractors (image -> embedding): one module per plugin, shared code in
``_common``."""

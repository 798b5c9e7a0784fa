"""Gallery stores that persist encrypted blocks and the slot map."""

"""frip-engine's built-in plugins, registered through the ``frip_engine`` entry points."""

"""frip_eval: measuring frip-engine (evaluation, calibration, benchmarks, the lfw-dev demo).

Not part of the engine: a plugin of frip-engine (entry point ``eval``) that mounts
``frip eval``, ``frip bench`` and ``frip demo`` through the ``register_commands`` hook, and
the library the scripts under ``benchmarks/`` call. It imports the core; the core never
imports it.
"""

"""The FRIP linkage service (``frip serve``): an HTTP API over the engines in $FRIP_HOME.

Nothing here imports Starlette or uvicorn at package import time: ``app.create_app`` and
the ``frip serve`` command import them when a server is really built.
"""

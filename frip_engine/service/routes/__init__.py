"""The service's route handlers, one module per resource; ``service.app`` assembles their
route table."""

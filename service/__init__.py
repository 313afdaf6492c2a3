"""The FastAPI service (see the service issue). Never imports torch or training."""

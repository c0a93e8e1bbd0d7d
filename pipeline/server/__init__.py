"""The HTTP API and its web page (the only package that imports FastAPI and uvicorn)."""

from pipeline.server.app import create_app, serve

__all__ = ["create_app", "serve"]

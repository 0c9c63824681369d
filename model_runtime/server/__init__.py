"""The OpenAI-compatible HTTP server over the engine (FastAPI + uvicorn).

Modules: ``app`` (routes, keys, lifecycle), ``openai_api`` (OpenAI bodies <-> engine requests and
results, SSE streams), ``schemas`` (request/response models; the OpenAPI document), ``errors``
(OpenAI's error shape), ``cli`` (``serve``). Importing the package imports nothing heavy.
"""

"""The serving runtime: OpenAI-compatible gateway, router, engines, controller and Ray placement.

Heavy dependencies (FastAPI, uvicorn, httpx, llama-cpp-python, Ray) are imported only by the modules
that use them; install them with ``pip install -e '.[serve]'``. The runtime never imports ``oserve.sim``.
"""

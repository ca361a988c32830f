"""The agent as a service: an OpenAI-compatible and a native HTTP API over one model in
memory, with API keys, interaction logging, feedback and dynamic batching.

`create_app(settings, db, engine=None)` in `serve/app.py` builds the FastAPI app;
`selftrain serve` runs it on uvicorn.
"""

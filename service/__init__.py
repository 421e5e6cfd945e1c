"""The LexVLA search service: a FastAPI app over a LexVLA model, a search index and a corpus store.

Layout (the FastAPI full-stack template's)::

    main.py          create_app(settings, *, model, index, store): the app factory and its lifespan
    cli.py           ``lexvla serve`` / ``python -m service``: settings from flags, uvicorn
    core/            settings, errors, metrics, middleware (load shedding, body limits), app state
    search/          what the routes call: query vectors, micro-batching, search with per-word
                     contributions, explanations and heat maps, index versions and hot swap
    api/             thin routes (``api/routes/*.py``), pydantic schemas, ``Annotated`` dependencies
    static/          the web UI (plain HTML/JS/CSS, no build step)
"""

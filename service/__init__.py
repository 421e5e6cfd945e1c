"""The LexVLA search service: a FastAPI app over a LexVLA model, a search index and a corpus store.

Layout (the FastAPI full-stack template's)::

    main.py          create_app(settings, *, model, index, store): the app factory and its lifespan
    state.py         ServiceState: what the lifespan loads (model, index holder, store, pipeline)
    cli.py           ``lexvla serve`` / ``python -m service``: flags generated from Settings, uvicorn
    core/            settings, errors, metrics, middleware (load shedding, body limits), LRU cache
    search/          what the routes call: query vectors, micro-batching, search (scoring itself
                     is ``indexer.scoring``), explanations and heat maps, index versions, hot swap
    api/             thin routes (``api/routes/*.py``), pydantic schemas, ``Annotated`` dependencies
    static/          the web UI (plain HTML/JS/CSS, no build step)
"""

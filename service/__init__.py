"""The LexVLA search service: a FastAPI app over a LexVLA model, a search index and a corpus store.

Layout (the FastAPI full-stack template's)::

    main.py          create_app(settings, *, model, index, store): the app factory and its lifespan
    state.py         ServiceState: what the lifespan loads (model, index holder, store, pipeline),
                     and following the index directory's published (or pinned) version
    cli.py           ``lexvla serve`` / ``python -m service``: flags generated from Settings; one
                     worker under uvicorn, several under gunicorn (``workers.py``)
    workers.py       the gunicorn server: a listening socket per worker, hung workers replaced
    keys_cli.py      ``lexvla keys add|list|revoke``: the API keys file
    schemas.py       the public request and response models (pydantic), below the routes and the
                     search code, which both use them
    core/            settings, errors, metrics (one view over the workers), middleware (load
                     shedding, body limits), LRU cache, the processes of a server and their versions
    search/          what the routes call: query vectors, micro-batching, searches on the served
                     index (``served.py``; scoring itself is ``indexer.scoring``), what a key may
                     see (``scope.py``), explanations and heat maps, index versions, hot swap
    api/             thin routes (``api/routes/*.py``, writes included), ``Annotated`` dependencies
    static/          the web UI (plain HTML/JS/CSS, no build step)
"""

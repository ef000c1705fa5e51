"""Scale-out on Ray Serve: engine replicas behind one OpenAI-compatible endpoint.

``launch`` starts (or joins) Ray and deploys a ``Gateway`` in front of N ``EngineReplica``s
(``deployments``). Each replica runs the single server's own app (``server.app.create_app``)
in-process through ``asgi_bridge``, so routes, API keys, limits and streaming are that code's;
the gateway only moves bytes, reports every replica (``board``) and turns a replica's death into a
retryable 503.
"""

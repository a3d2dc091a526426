"""Rate limiting shared by every worker and replica (docs/rate-limiting.md).

The guarantee is exact: in any interval of `window` seconds at most `quota` requests of
one client are allowed, and a client that sends more than `quota` requests within one
window gets exactly `quota` of them through, whichever workers and replicas answered.
Who "one client" is: app/client_identity.py (an API key this service issued, else the
address).

    policy.py          the RATE_LIMIT_DEFAULT / RATE_LIMIT_ROUTES grammar -> RateLimitPolicy
    sliding_window.py  the Lua script and acquire(): one decision, atomically, in Redis
    autopipeline.py    batches concurrent decisions into one pipeline under load
    local_limiter.py   this worker's share of a quota while Redis cannot decide
    middleware.py      RateLimitMiddleware: policy, client, decision, headers, 429/503

Nothing is imported here: app/settings.py reads policy.py, and middleware.py reads the
settings.
"""

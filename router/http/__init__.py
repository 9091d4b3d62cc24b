"""The gateway's HTTP edge, one purpose per module.

- :mod:`router.http.request`: reading a request body and parsing a chat call into a frozen
  :class:`~router.http.request.ChatRequest` (errors name the field);
- :mod:`router.http.auth`: tenant API keys and the admin key;
- :mod:`router.http.gateway`: the per-app state (engines, canary, reloaders, decision ids,
  decision events);
- :mod:`router.http.dispatch`: calling the chosen model (fallbacks, streaming, outcome events);
- :mod:`router.http.routes`: the routes;
- :mod:`router.http.errors`: the one table from error class to HTTP status, and the error body.

:func:`router.app.create_app` puts them together.
"""

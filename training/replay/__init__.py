"""The replay backend: an OpenAI-compatible test/benchmark server that plays a routing
dataset's recorded answers (not part of serving: the gateway only ever sees it over HTTP)."""

"""The check path's HTTP side: ``POST /v1/check`` and ``POST /v1/batch`` as raw ASGI
handlers, with the problem details every route of the API answers errors with."""

"""The control plane's request and response bodies, in one place: ``requests`` validates
what callers send, ``responses`` describes what the routes answer (for the OpenAPI document)."""

"""Envoy's rate limit service (``envoy.service.ratelimit.v3.RateLimitService``) over gRPC.

``descriptors`` turns a ``RateLimitRequest`` into checks, ``answers`` turns their outcomes
into a ``RateLimitResponse``, ``service`` authenticates and decides a call the way the HTTP
check does, ``server`` runs it on ``--grpc-port`` in the limiter's event loop.  Nothing
here is imported unless ``--grpc-port`` is given: grpcio and the generated Envoy protos
(``xds-protos``) cost the process tens of megabytes.
"""

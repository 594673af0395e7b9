"""RateWatch: the Python SDK, middleware and the ``ratewatch`` command."""

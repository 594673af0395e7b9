"""The processes the ``ratewatch`` command runs: the limiter's server, and ``up``'s tree."""

"""The limiter's exception types; driver errors are wrapped once, where they occur."""


class LimiterError(Exception):
    """Base class of the limiter's errors."""


class ConfigError(LimiterError):
    """A setting has a value the limiter cannot run with; the message names it."""


class StoreUnavailable(LimiterError):
    """The Redis store could not be reached or did not answer in time."""


class NotFound(LimiterError):
    """A key, block or tenant the caller named does not exist (for that tenant)."""


class InvalidInput(LimiterError):
    """A value given by a caller is not acceptable; the message quotes it."""

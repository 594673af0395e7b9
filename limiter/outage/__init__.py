"""Decisions answered while Redis is unreachable, kept until the decision stream takes them.

In the embedded deployment the check script appends each decision to the Valkey stream in
the call that decides it.  When Redis does not answer, the failure policy
(``limiter.failover``) decides instead, and nothing writes those decisions to the stream:
``OutageRecorder`` (``recorder.py``) keeps them in a disk spool (``limiter.sinks.spool``)
and ``StreamReplay`` (``replay.py``) appends them to the stream, exactly once, in the
compact entry the consumers already read, once Redis answers again.  ``records.py`` is the
spool's record format.
"""

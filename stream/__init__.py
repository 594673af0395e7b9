"""The decision stream: the event contract the limiter produces and every consumer reads."""

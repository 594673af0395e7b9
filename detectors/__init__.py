"""Abuse detection: scikit-learn estimators over features of the decision stream, which
write dynamic blocks through ``limiter.state.blocks.BlockStore`` (see that module for the block
storage format the limiter enforces)."""

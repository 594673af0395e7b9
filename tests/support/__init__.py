"""What the tests share: real servers, clients of them, polling helpers and fixtures."""

"""Models: the registry of embedded models, pulling, loading, and a tiny model for tests."""

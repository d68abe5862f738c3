"""Per-call routing: the mapping cache, connection registries and fan-out."""

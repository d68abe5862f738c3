"""A cell's own database: the per-cell tables. Knows nothing about routing."""

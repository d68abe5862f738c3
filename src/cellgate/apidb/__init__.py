"""The API database: cell, host and instance mappings (the global tables)."""

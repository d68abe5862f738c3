"""The reference service: a REST API and per-cell workers, built on ``App``."""

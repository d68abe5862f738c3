"""Operator tasks (migrate, verify, embedded set-up) as plain functions.

The CLI in :mod:`cellgate.cli` parses arguments and prints; the work is here,
so it can be called and tested without click.
"""

"""SQL: every SQLAlchemy engine cellgate makes, and who owns each one.

- :mod:`cellgate.sql.engines`: :func:`~cellgate.sql.engines.make_engine`, the
  one function that builds an engine (timeouts per driver, hidden
  parameters), and the driver-error seam
  (:func:`~cellgate.sql.engines.translate_errors`);
- :mod:`cellgate.sql.registry`: :class:`~cellgate.sql.registry.EngineRegistry`,
  the cell engines of one ``App`` (bounded, one per URL), and its short-lived
  engines for migrations and checks;
- :mod:`cellgate.sql.api_database`:
  :class:`~cellgate.sql.api_database.ApiDatabase`, the API database's engine,
  sessions and schema check.

One package, so that "where are engines built?" has one answer. The schema
and query functions that run on these engines (:mod:`cellgate.apidb`,
:mod:`cellgate.celldb`) take a ``Session`` and know nothing of engines.
"""

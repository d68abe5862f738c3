"""Reading an OpenStack Nova deployment: its URLs and its API database, never writing.

cellgate implements the same cells v2 design as Nova, so the people who would
use it run Nova today. This package holds what cellgate knows about Nova's
side: how Nova writes database and transport URLs (:mod:`cellgate.nova.urls`,
translated to the drivers cellgate ships), with no engine and no I/O of its
own (the data layer's rule: ``tests/unit/test_layering.py``).
"""

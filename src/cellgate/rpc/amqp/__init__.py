"""AMQP: everything that talks to a RabbitMQ broker, over kombu and py-amqp.

- :mod:`cellgate.rpc.amqp.broker`: the kombu seam: one broker connection,
  the ``cell verify`` / health probe, and the translation of kombu's errors;
- :mod:`cellgate.rpc.amqp.rabbit`: :class:`~cellgate.rpc.amqp.rabbit.RabbitTransport`,
  the ``rabbit://`` / ``amqp://`` driver behind :mod:`cellgate.rpc.transport`.

Kept in one package, findable by name, so that kombu's untyped API is called
from nowhere else. Importing kombu is slow, so nothing outside this package
imports it, and this package is imported only where a broker is used: the
``App``'s transport factory loads the driver on the first rabbit URL.
"""

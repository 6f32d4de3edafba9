"""Development tools run with ``python -m``, not part of a deployment: a local Kafka-protocol
broker (``serving.dev.broker``, ``make broker``) and a sharded cluster on one machine
(``serving.dev.cluster_demo``, ``make cluster-demo``).

They sit above every other part of the package (they use the registry, the loaders and the
sample generator, and start ``feature-serving`` processes); nothing in ``serving`` imports them.
"""

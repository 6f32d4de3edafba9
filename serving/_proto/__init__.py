"""Python modules generated from ``proto/`` by ``python -m serving._codegen`` (``make proto``).

Subpackages ``feast`` and ``feature_serving`` are generated (not committed), e.g.
``serving._proto.feature_serving.v1.feature_service_pb2``; their imports are rewritten to
absolute ``serving._proto.*`` imports, so nothing is added to ``sys.path``.
"""

"""Identities beyond API keys and what they may do (docs/security.md).

``roles``: the per-project roles (reader, writer, admin) and how a set of grants becomes the
read / write / admin rights of one caller in one project. ``jwks`` and ``jwt``: bearer tokens
(OIDC, Kubernetes service accounts) verified against a JWKS, their claims mapped to grants by
configuration. ``config``: the ``--auth-config`` file that configures them. The API keys
themselves, and the one per-request entry point every frontend calls, stay in
``serving.frontend.auth``.
"""

"""The try-it panel's "same call in code": the request it just sent, as curl, as this
project's Python client and as the Feast SDK (``online_store: {type: remote}``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from serving.errors import InvalidArgumentError

#: what a snippet shows in place of the caller's key: the console never echoes a secret
KEY_PLACEHOLDER = "$FEATURE_SERVING_API_KEY"


def parse_try(body: Mapping[str, Any]) -> tuple[list[str] | None, str | None, dict[str, list[Any]]]:
    """``{"features": [...]} or {"feature_service": name}`` plus ``{"entities": {key:
    [values]}}``, checked as the serving endpoints check them, naming the field."""
    features = body.get("features")
    service = body.get("feature_service")
    entities = body.get("entities")
    if (features is None) == (service is None):
        raise InvalidArgumentError("give either 'features' (a list) or 'feature_service'")
    if features is not None and (
        not isinstance(features, list) or not all(isinstance(f, str) for f in features)
    ):
        raise InvalidArgumentError("'features' must be a list of 'view:feature' strings")
    if service is not None and not isinstance(service, str):
        raise InvalidArgumentError("'feature_service' must be a string")
    if not isinstance(entities, dict) or not entities:
        raise InvalidArgumentError("'entities' must be an object of join key -> list of values")
    for k, v in entities.items():
        if not isinstance(v, list) or not v:
            raise InvalidArgumentError(f"'entities.{k}' must be a non-empty list")
    return features, service, entities


def snippets(
    base_url: str,
    grpc_target: str,
    features: Sequence[str] | None,
    service: str | None,
    entities: Mapping[str, Sequence[Any]],
    *,
    auth: bool,
) -> dict[str, str]:
    """curl (the Feast HTTP API), the Python client (gRPC) and the Feast SDK."""
    request: dict[str, Any] = (
        {"feature_service": service} if service is not None else {"features": list(features or ())}
    )
    request["entities"] = {k: list(v) for k, v in entities.items()}
    body = json.dumps(request)
    header = f'  -H "Authorization: Bearer {KEY_PLACEHOLDER}" \\\n' if auth else ""
    curl = (
        f"curl -s {base_url}/get-online-features \\\n{header}"
        f"  -H 'Content-Type: application/json' \\\n  -d '{body}'"
    )
    what = (
        f"feature_service={service!r}"
        if service is not None
        else f"features={list(features or ())!r}"
    )
    ents = repr({k: list(v) for k, v in entities.items()})
    key_arg = ', api_key=os.environ["FEATURE_SERVING_API_KEY"]' if auth else ""
    python = (
        ("import os\n" if auth else "")
        + "from serving.client import FeatureClient\n\n"
        + f'with FeatureClient("{grpc_target}"{key_arg}) as client:\n'
        + f"    result = client.get_features({ents}, {what})\n"
        + "    print(result.columns)"
    )
    n = len(next(iter(entities.values())))
    rows = [{k: v[i] for k, v in entities.items()} for i in range(n)]
    sdk_features = (
        f'store.get_feature_service("{service}")'
        if service is not None
        else repr(list(features or ()))
    )
    auth_yaml = "#   auth: {type: oidc, token_env_var: FEATURE_SERVING_API_KEY}\n" if auth else ""
    feast = (
        "# feature_store.yaml:\n"
        f"#   online_store: {{type: remote, path: {base_url}}}\n"
        f"{auth_yaml}"
        "from feast import FeatureStore\n\n"
        'store = FeatureStore(repo_path=".")\n'
        "response = store.get_online_features(\n"
        f"    features={sdk_features},\n"
        f"    entity_rows={rows!r},\n"
        ")\n"
        "print(response.to_dict())"
    )
    return {"curl": curl, "python": python, "feast": feast}

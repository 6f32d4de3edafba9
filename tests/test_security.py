"""JWT verification against a JWKS file: every attack of docs/security.md refused with its
reason, claims mapped to grants, a rotated key set picked up; the audit log's file; real RSA
keys, real files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from serving.errors import InvalidArgumentError, RateLimitedError, UnauthenticatedError
from serving.security import jwks as jwks_mod
from serving.security.audit import AuditConfig, AuditLog
from serving.security.config import load_security
from serving.security.limits import Limit, Limiter, LimitsConfig
from serving.security.roles import Grant, rights
from serving.security.tokens import TokenVerifier
from tests.harness.oidc import AUDIENCE, ISSUER, Issuer


def _config(tmp: Path, jwks: str, extra: str = "") -> Path:
    p = tmp / "auth.yaml"
    p.write_text(
        f"""
jwt:
  jwks: {jwks}
  issuer: {ISSUER}
  audience: {AUDIENCE}
  leeway_seconds: 0
  claim: groups
  roles:
    - {{match: readers, project: demo, role: reader, views: [user_profile]}}
    - {{match: writers, project: demo, role: writer, views: [item_stats]}}
    - {{match: admins, project: "*", role: admin}}
{extra}"""
    )
    return p


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    i = Issuer(tmp_path)
    i.new_key("k1")
    return i


@pytest.fixture
def verifier(tmp_path: Path, issuer: Issuer) -> TokenVerifier:
    cfg = load_security(_config(tmp_path, "jwks.json"))
    assert cfg.jwt is not None
    return TokenVerifier(cfg.jwt)


def test_valid_token_maps_groups_to_grants(issuer: Issuer, verifier: TokenVerifier) -> None:
    v = verifier.verify(issuer.token(groups=["readers", "writers", "unrelated"]))
    assert v.subject == "alice"
    r = rights(v.grants, "demo")
    assert (r.role, r.read, r.write, r.admin) == (
        "writer",
        ("item_stats", "user_profile"),
        ("item_stats",),
        False,
    )
    assert not rights(v.grants, "other").any
    admin = rights(verifier.verify(issuer.token(groups="admins")).grants, "other")
    assert (admin.role, admin.read, admin.admin) == ("admin", ("*",), True)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda i: i.token(signer="evil"), "signature does not verify"),
        (lambda i: i.token(iss="https://other.test"), "issuer is not"),
        (lambda i: i.token(aud="someone-else"), "audience is not"),
        (lambda i: i.token(exp=int(time.time()) - 5), "token expired"),
        (lambda i: i.token(exp=None), "lacks the 'exp' claim"),
        (lambda i: i.token(nbf=int(time.time()) + 600), "not valid yet"),
        (lambda i: i.forged("none"), "algorithm 'none' is not accepted"),
        (lambda i: i.forged("HS256"), "algorithm 'HS256' is not accepted"),
        (lambda i: i.token(kid="k9", signer="k1"), "key id 'k9'"),
        (lambda i: "abc.def.ghi", "malformed bearer token"),
    ],
    ids=[
        "bad-signature",
        "issuer",
        "audience",
        "expired",
        "no-exp",
        "nbf",
        "alg-none",
        "hmac-confusion",
        "unknown-kid",
        "garbage",
    ],
)
def test_attacks_are_refused_with_their_reason(
    issuer: Issuer, verifier: TokenVerifier, make: object, reason: str
) -> None:
    issuer.new_key("evil", publish=False)
    with pytest.raises(UnauthenticatedError, match=reason):
        verifier.verify(make(issuer))  # type: ignore[operator]


def test_hmac_confusion_refused_even_if_hs256_were_listed(tmp_path: Path) -> None:
    """The config itself refuses symmetric algorithms: the JWKS is public."""
    p = (
        _config(tmp_path, "jwks.json")
        .read_text()
        .replace("leeway_seconds: 0", "leeway_seconds: 0\n  algorithms: [RS256, HS256]")
    )
    (tmp_path / "bad.yaml").write_text(p)
    with pytest.raises(InvalidArgumentError, match="HS256 not allowed"):
        load_security(tmp_path / "bad.yaml")


def test_plain_http_jwks_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="plain http"):
        load_security(_config(tmp_path, "http://127.0.0.1:1/jwks.json"))


def test_rotated_file_is_picked_up(
    issuer: Issuer, verifier: TokenVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jwks_mod, "FILE_CHECK_SECONDS", 0.0)
    old = issuer.token("k1", groups=["readers"])
    issuer.new_key("k2", publish=False)
    new = issuer.token("k2", groups=["readers"])
    with pytest.raises(UnauthenticatedError, match="key id 'k2'"):
        verifier.verify(new)
    time.sleep(0.01)  # a distinct modification time
    issuer.publish(["k2"])  # k1 retired, k2 in
    assert verifier.verify(new).subject == "alice"
    with pytest.raises(UnauthenticatedError, match="key id 'k1'"):
        verifier.verify(old)


def test_broken_rewrite_keeps_the_previous_keys(
    issuer: Issuer, verifier: TokenVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jwks_mod, "FILE_CHECK_SECONDS", 0.0)
    token = issuer.token(groups=["readers"])
    time.sleep(0.01)
    issuer.jwks_file.write_text("{not json")
    assert verifier.verify(token).subject == "alice"
    assert verifier.jwks.last_error is not None
    assert "not JSON" in verifier.jwks.last_error


def test_unknown_role_and_field_name_the_entry(tmp_path: Path) -> None:
    p = tmp_path / "a.yaml"
    p.write_text(
        f"jwt: {{jwks: j.json, issuer: {ISSUER}, audience: a, roles: [{{match: g, role: boss}}]}}"
    )
    with pytest.raises(InvalidArgumentError, match=r"roles\[0\]: unknown role 'boss'"):
        load_security(p)
    p.write_text(f"jwt: {{jwks: j.json, issuer: {ISSUER}, audience: a, audiences: b}}")
    with pytest.raises(InvalidArgumentError, match=r"unknown field.*audiences"):
        load_security(p)


def test_rights_union_and_nesting() -> None:
    grants = [Grant("demo", "reader", ("a",)), Grant("demo", "writer", ("b",))]
    r = rights(grants, "demo")
    assert (r.read, r.write, r.role) == (("a", "b"), ("b",), "writer")
    assert rights([Grant("*", "reader")], "x").read == ("*",)


def test_audit_log_rotates_and_writes_json_lines(tmp_path: Path) -> None:
    log = AuditLog(AuditConfig(path=str(tmp_path / "audit.jsonl"), max_bytes=2000, backups=2))
    try:
        for i in range(40):
            log.record(
                "write", identity="loader", kind="api_key", project="demo", role="writer",
                api="POST", method="/v1/push", status="200", views=["v"], entities=i,
                request_id=f"r{i}",
            )  # fmt: skip
    finally:
        log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert lines[-1]["entities"] == 39
    assert lines[-1]["request_id"] == "r39"
    assert set(lines[-1]) == {"ts", "event", "identity", "kind", "project", "role", "api",
                              "method", "views", "entities", "status", "request_id"}  # fmt: skip


def test_audit_sampling_is_a_fraction(tmp_path: Path) -> None:
    never = AuditLog(AuditConfig(path=str(tmp_path / "a"), read_sample=0.0))
    always = AuditLog(AuditConfig(path=str(tmp_path / "b"), read_sample=1.0))
    some = AuditLog(AuditConfig(path=str(tmp_path / "c"), read_sample=0.25))
    try:
        assert not any(never.sampled() for _ in range(1000))
        assert all(always.sampled() for _ in range(1000))
        assert 150 < sum(some.sampled() for _ in range(1000)) < 350
    finally:
        for log in (never, always, some):
            log.close()


def test_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    lim = Limiter(
        LimitsConfig(Limit(rate=2.0, burst=3.0), {"vip": Limit(concurrency=1)}),
        clock=lambda: now[0],
    )
    for _ in range(3):
        lim.take("a")
    with pytest.raises(RateLimitedError, match=r"2/s \(burst 3\)") as e:
        lim.take("a")
    assert e.value.retry_after_seconds == 1
    lim.take("b")  # another identity has its own bucket
    now[0] = 0.5  # one token back
    lim.take("a")
    with pytest.raises(RateLimitedError):
        lim.take("a")
    lim.take("vip")  # no rate limit of its own
    assert lim.enter("vip")
    with pytest.raises(RateLimitedError, match="concurrency 1"):
        lim.enter("vip")
    lim.leave("vip")
    assert lim.enter("vip")
    assert not lim.enter("a")  # no cap: nothing to leave


def test_limits_config_names_bad_entries(tmp_path: Path) -> None:
    p = tmp_path / "a.yaml"
    p.write_text("limits: {identities: {ranker: {rate: 10, bursts: 5}}}")
    with pytest.raises(InvalidArgumentError, match=r"identities.ranker: unknown field.*bursts"):
        load_security(p)
    p.write_text("limits: {default: {rate: 10}}")
    cfg = load_security(p).limits
    assert cfg is not None
    assert cfg.default == Limit(rate=10.0, burst=10.0)

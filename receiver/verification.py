"""Who sent this? Clerk deliveries are Svix-signed; Asaas deliveries carry a static token.

Both checks run on what arrived on the wire (the raw body bytes, the header bytes) before
anything is parsed, and fail with `Rejected`, never with a library's own exception type.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from collections.abc import Iterable
from typing import Protocol

from svix.webhooks import Webhook, WebhookVerificationError

from models.settings import ConfigError
from receiver.errors import Rejected

SVIX_HEADERS = ("svix-id", "svix-timestamp", "svix-signature")
ASAAS_TOKEN_HEADER = "asaas-access-token"

# svix 2.x raises WebhookVerificationError for a wrong signature or a stale timestamp, but a
# malformed header escapes as whatever the parsing step raised: `ValueError` for a signature
# without a "," or with non-ASCII text, `binascii.Error` for bad base64, and
# `UnicodeDecodeError` when the body is not UTF-8 (svix verifies text). All of them mean "not
# authenticated". (The last two are ValueErrors; they are listed to document the cases.)
_SVIX_FAILURES = (WebhookVerificationError, ValueError, binascii.Error, UnicodeDecodeError)
# The timestamp is checked before any signature, against svix's fixed 5-minute tolerance, and
# svix says which way it failed only in the message: "Message timestamp too old" / "too new"
# (svix 1.x and 2.x, which delegates to standardwebhooks). The same for every secret.
_SVIX_TIMESTAMP_MESSAGE = "Message timestamp too"
SVIX_TOLERANCE_MINUTES = 5

# Stable `error` codes: which check failed. Details say what to look at, never a value sent.
MISSING_SIGNATURE_HEADERS = Rejected(
    401, "missing_signature_headers", "svix-id, svix-timestamp and svix-signature are required"
)
TIMESTAMP_OUT_OF_TOLERANCE = Rejected(
    401,
    "timestamp_out_of_tolerance",
    f"the svix-timestamp is more than {SVIX_TOLERANCE_MINUTES} minutes from the receiver's clock "
    "(a delivery replayed late, or a clock that is off)",
)
BAD_SIGNATURE = Rejected(401, "bad_signature", "no svix-signature matches the body with a configured secret")
MISSING_TOKEN = Rejected(401, "missing_token", f"the {ASAAS_TOKEN_HEADER} header is required")
BAD_TOKEN = Rejected(401, "bad_token", f"the {ASAAS_TOKEN_HEADER} header does not match")

_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class HeaderLookup(Protocol):
    """Request headers by name: werkzeug's case-insensitive `Headers`, or a plain dict."""

    def get(self, key: str, /) -> str | None: ...


class ClerkVerifier:
    def __init__(self, secrets: Iterable[str]) -> None:
        self._webhooks: list[Webhook] = []
        for secret in secrets:
            if not _is_svix_secret(secret):
                raise ConfigError(
                    "configuration error: CLERK_WEBHOOK_SIGNING_SECRET holds a value that is not "
                    "a Svix signing secret (the whsec_ prefix and base64)"
                )
            self._webhooks.append(Webhook(secret))
        if not self._webhooks:
            raise ConfigError("configuration error: CLERK_WEBHOOK_SIGNING_SECRET is not set (the receiver needs it)")

    def require_headers(self, headers: HeaderLookup) -> dict[str, str]:
        """The three Svix headers, or 401 (checked before the body is read)."""
        # Hand svix only the three headers it reads: nothing else of the request reaches it.
        svix_headers = {name: headers.get(name) or "" for name in SVIX_HEADERS}
        if not all(svix_headers.values()):
            raise _fresh(MISSING_SIGNATURE_HEADERS)
        return svix_headers

    def verify(self, body: bytes, headers: HeaderLookup) -> str:
        """Return the delivery's `svix-id` once some configured secret signed `body`."""
        svix_headers = self.require_headers(headers)
        # Every configured secret is tried: during a rotation Clerk signs with the new secret
        # while deliveries signed with the old one may still be in flight or retried.
        for webhook in self._webhooks:
            try:
                webhook.verify(body, svix_headers)
            except WebhookVerificationError as exc:
                if str(exc).startswith(_SVIX_TIMESTAMP_MESSAGE):
                    raise _fresh(TIMESTAMP_OUT_OF_TOLERANCE) from None
                continue
            except _SVIX_FAILURES:
                continue
            return svix_headers["svix-id"]
        raise _fresh(BAD_SIGNATURE)


class AsaasVerifier:
    def __init__(self, tokens: Iterable[str], allowed_ips: Iterable[str]) -> None:
        self._tokens = [token.encode() for token in tokens]
        if not self._tokens:
            raise ConfigError("configuration error: ASAAS_WEBHOOK_TOKEN is not set (the receiver needs it)")
        self._allowed = _parse_allowlist(allowed_ips)

    def check_source(self, client_address: str | None) -> None:
        """Refuse a client outside ASAAS_ALLOWED_IPS (an empty list allows everyone)."""
        if not self._allowed:
            return
        address = _parse_address(client_address)
        if address is None or not any(address in network for network in self._allowed):
            raise Rejected(403, "forbidden_ip", "this source address may not post Asaas webhooks")

    def check_token(self, headers: HeaderLookup) -> None:
        presented = headers.get(ASAAS_TOKEN_HEADER)
        if not presented:
            raise _fresh(MISSING_TOKEN)
        presented_bytes = _wire_bytes(presented)
        # Compare with every token, without stopping at a match: the time taken does not tell
        # which token (or how much of one) was right.
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(presented_bytes, token)
        if not matched:
            raise _fresh(BAD_TOKEN)


def _fresh(template: Rejected) -> Rejected:
    """A new exception per request (a raised exception carries its traceback)."""
    return Rejected(template.status, template.code, template.detail)


def _is_svix_secret(secret: str) -> bool:
    # svix decodes the key leniently (it skips characters outside base64), so a mangled copy
    # of the secret would quietly become another key and every delivery a 401. Strict here.
    key = secret.removeprefix("whsec_")
    try:
        return bool(base64.b64decode(key + "=" * (-len(key) % 4), validate=True))
    except ValueError:  # binascii.Error for bad base64, ValueError for non-ASCII text
        return False


def _wire_bytes(value: str) -> bytes:
    # WSGI servers hand header values over as latin-1-decoded text (PEP 3333), so encoding back
    # gives the bytes that were sent. A value outside latin-1 cannot have come from a WSGI
    # server, only from an in-process caller; it still must compare as "no match", not crash.
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


def _parse_allowlist(entries: Iterable[str]) -> tuple[_IPNetwork, ...]:
    networks = []
    for entry in entries:
        try:
            # A bare address is a /32 (or /128) network; CIDR ranges are accepted as well.
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ConfigError(
                "configuration error: ASAAS_ALLOWED_IPS holds an entry that is not an IP address or network"
            ) from None
    return tuple(networks)


def _parse_address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # A dual-stack socket reports an IPv4 client as ::ffff:a.b.c.d; match it as a.b.c.d.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address

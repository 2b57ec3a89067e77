"""Schemathesis hooks (schemathesis 4.x) for the saga participants.

SAGA_AUTH=sign: every request is signed as common/src/auth.rs checks it:
    HMAC-SHA256(secret, f"{METHOD}\n{path?query}\n{timestamp}\n{nonce}\n" + body)
sent as saga-key-id, saga-timestamp, saga-nonce, saga-signature: v1=<base64>.
Needs KEY_ID and KEY_SECRET (the participant's AUTH_KEYS entry `KEY_ID:KEY_SECRET`).

SAGA_AUTH=refused: nothing is signed, and the check
`unsigned_calls_are_refused` fails on any answer but 401 outside the open paths.

SAGA_AUTH=none (the orchestrator): nothing is signed, nothing more checked.

Load with: SCHEMATHESIS_HOOKS=path/to/hooks.py (a path with / or .py is exec'd as a file;
a bare name is imported as a module, with the cwd added to sys.path).
"""
import base64
import hashlib
import hmac
import os
import time
import uuid
from urllib.parse import urlsplit

import requests
import schemathesis

# common/src/auth.rs: the paths open to every caller.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})

try:  # what urllib3 really puts on the wire (it re-encodes invalid chars, upper-cases %xx)
    from urllib3.util.url import _encode_target as _wire_target
except ImportError:  # pragma: no cover - a urllib3 without it sends path_url as is
    def _wire_target(target: str) -> str:
        return target


def canonical(method: str, path: str, timestamp: int, nonce: str, body: bytes) -> bytes:
    """Key::mac's input: method, path with query, timestamp, nonce, each + \\n, then the body."""
    return f"{method}\n{path}\n{timestamp}\n{nonce}\n".encode() + body


def sign(secret: bytes, method: str, path: str, timestamp: int, nonce: str, body: bytes) -> str:
    mac = hmac.new(secret, canonical(method, path, timestamp, nonce, body), hashlib.sha256)
    return "v1=" + base64.b64encode(mac.digest()).decode("ascii")


class SagaSignature(requests.auth.AuthBase):
    """A `requests` auth: runs on the PreparedRequest, after schemathesis has
    serialized the body and built the URL, so it signs the exact bytes sent."""

    def __init__(self, key_id: str, secret: str):
        self.key_id = key_id
        self.secret = secret.encode("utf-8")  # Key::parse: the text's bytes, not hex/base64

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        body = r.body or b""
        if isinstance(body, str):
            body = body.encode("iso-8859-1")  # what http.client does with a str body
        elif not isinstance(body, (bytes, bytearray)):
            raise TypeError(f"cannot sign a streamed body ({type(body).__name__})")
        path = _wire_target(r.path_url)  # path + "?" + query, as the server's path_and_query
        timestamp = int(time.time())
        nonce = uuid.uuid4().hex  # any value; a fresh one per request so no signature repeats
        r.headers["saga-key-id"] = self.key_id
        r.headers["saga-timestamp"] = str(timestamp)
        r.headers["saga-nonce"] = nonce
        r.headers["saga-signature"] = sign(self.secret, r.method.upper(), path, timestamp, nonce, bytes(body))
        return r


MODE = os.environ.get("SAGA_AUTH", "none")

if MODE == "sign":
    key_id = os.environ.get("KEY_ID")
    secret = os.environ.get("KEY_SECRET")
    if not key_id or not secret:
        raise RuntimeError("fuzz_hooks.py: SAGA_AUTH=sign needs KEY_ID and KEY_SECRET")
    if len(secret.encode()) < 16:
        raise RuntimeError("fuzz_hooks.py: KEY_SECRET is shorter than the 16 bytes a participant accepts")
    # Global auth: applies to every operation of every schema in the run.
    schemathesis.auth.set_from_requests(SagaSignature(key_id, secret))
elif MODE == "refused":
    # Answers given before the auth layer (common/src/server.rs stack, which
    # wraps the Verifier): no handler ran, so nothing changed. Anything else
    # outside OPEN_PATHS must be a 401.
    PRE_AUTH = {
        400: ("control_character", None),  # refuse_control_in_url: %01..%1F in path/query
        413: ("body_too_large", None),  # RequestBodyLimitLayer, 64 KiB
        404: ("not_found", "no such route"),  # the router's fallback, outside the auth layer
        405: ("method_not_allowed", None),  # method_not_allowed_fallback (verify on the real service)
    }

    def _pre_auth(response) -> bool:
        allowed = PRE_AUTH.get(response.status_code)
        if allowed is None:
            return False
        try:
            body = response.json()
        except Exception:
            return False
        code, message_prefix = allowed
        if not isinstance(body, dict) or body.get("error") != code:
            return False
        return message_prefix is None or str(body.get("message", "")).startswith(message_prefix)

    @schemathesis.check
    def unsigned_calls_are_refused(ctx, response, case):
        """Unsigned run: every call outside the open paths must get 401."""
        path = urlsplit(response.request.url).path
        if path in OPEN_PATHS:
            return None
        if response.status_code == 401 or _pre_auth(response):
            return None
        raise AssertionError(
            f"unsigned {response.request.method} {path} answered {response.status_code}, expected 401"
        )

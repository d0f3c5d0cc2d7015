"""Why a connection ended before the server's welcome, in words a user can act on.

Twisted reports these as exception text (``VerificationError(errors=[DNSMismatch(...)])``,
``Connection was closed cleanly.``); here they become one line that says what to change.
Some causes are permanent (a certificate for another name, TLS against a plain port):
retrying cannot help, so the client stops at once; the rest are retried.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from twisted.internet import error
from twisted.internet.interfaces import ISSLTransport
from twisted.python.failure import Failure

from twisted_chat.core.sanitize import clean_text


@dataclass(frozen=True)
class EarlyEnd:
    message: str
    permanent: bool  # retrying cannot help: stop and say why


def alternative_server(label: str) -> str | None:
    """The other spelling of ``--server``: TLS for a plain address and plain for TLS.

    Used in hints only; None when there is no obvious one (a UNIX socket, keyword forms).
    """
    label = label.strip()
    m = re.fullmatch(r"(?:tcp:)?([^:\[\]=]+):(\d+)", label)
    if m:
        return f"tls:{m.group(1)}:{m.group(2)}"
    m = re.fullmatch(r"(?:tls|ssl):([^:\[\]=]+):(\d+)(?::.*)?", label)
    if m:
        return f"{m.group(1)}:{m.group(2)}"
    return None


def ended_before_welcome(
    reason: Failure, transport: Any, heard: bool, alternative: str | None
) -> EarlyEnd:
    """Explain a connection that ended before the welcome.

    ``heard``: whether the server sent any byte; ``alternative``: see
    :func:`alternative_server`.
    """
    tls = transport is not None and ISSLTransport.providedBy(transport)
    mismatch = _name_mismatch(reason, transport)
    if mismatch is not None:
        return EarlyEnd(mismatch, permanent=True)
    text = reason.getErrorMessage()
    if any(s in text for s in ("certificate verify failed", "unknown ca")):
        return EarlyEnd(
            "the server's TLS certificate is not trusted: add "
            "trustRoots=FOLDER-WITH-ITS-CERTIFICATE to --server",
            permanent=True,
        )
    if tls and "wrong version number" in text:
        try_this = f" try --server {alternative}" if alternative else ""
        return EarlyEnd(
            f"the server did not answer in TLS: is it a plain port?{try_this}", permanent=True
        )
    if reason.check(error.ConnectionDone) and not heard:
        # A groupchat server always says something first (a greeting, a login request, a
        # refusal): silence then a close is what a TLS port does with a plain client.  Not
        # permanent: a proxy in front of a restarting server does it too.
        hint = ""
        if not tls and alternative and alternative.startswith("tls:"):
            hint = f"; is it a TLS port? try --server {alternative}"
        return EarlyEnd(f"the server closed the connection before greeting us{hint}", False)
    return EarlyEnd(why_lost(reason), permanent=False)


def why_lost(reason: Failure) -> str:
    """The end of a connection in words a user reads, not Twisted's exception text."""
    if reason.check(error.ConnectionDone):
        return "the server closed the connection"
    if reason.check(error.ConnectionLost):
        return "the connection dropped"
    return f"connection lost ({reason.getErrorMessage()})"


def _name_mismatch(reason: Failure, transport: Any) -> str | None:
    """The message for a certificate issued for other names than the one we dialled."""
    try:
        from service_identity import VerificationError
    except ImportError:  # no TLS support installed: no TLS connection either
        return None
    failure = reason.check(VerificationError)
    if failure is None:
        return None
    errors = getattr(reason.value, "errors", None) or []
    wanted = "this host"
    for mismatch in errors:
        ident = getattr(mismatch, "mismatched_id", None)
        value = getattr(ident, "hostname", None) or getattr(ident, "ip", None)
        if value is not None:
            wanted = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
            break
    names = _certificate_names(transport)
    issued = f" (it is for {', '.join(names)})" if names else ""
    return (
        f"the server's TLS certificate is not valid for {clean_text(wanted)}{issued}; "
        "check the host name in --server"
    )


def _certificate_names(transport: Any) -> list[str]:
    """The names the server's certificate is for (its subjectAltNames, else its CN)."""
    try:
        chain = transport.getHandle().get_peer_cert_chain()
        if not chain:
            return []
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        cert = chain[0].to_cryptography()
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
            names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
        except x509.ExtensionNotFound:
            names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    except Exception:  # best effort: the message is still clear without the names
        return []
    shown = [clean_text(n) for n in names[:5]]
    if len(names) > 5:
        shown.append(f"and {len(names) - 5} more")
    return shown

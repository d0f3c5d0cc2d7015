"""Why a connection ended before the welcome, in words; and the client's option parsing."""

from __future__ import annotations

import datetime
import ipaddress
from typing import Any

import pytest
from OpenSSL import SSL, crypto
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import alsoProvides

from twisted_chat.client.diagnose import alternative_server, ended_before_welcome


def _certificate(names: list[str], ips: list[str]) -> crypto.X509:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cn-not-shown")])
    now = datetime.datetime.now(datetime.UTC)
    alt = [x509.DNSName(n) for n in names] + [
        x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .sign(key, hashes.SHA256())
    )
    return crypto.X509.from_cryptography(cert)


class _Handle:
    def __init__(self, chain: list[crypto.X509] | None) -> None:
        self.chain = chain

    def get_peer_cert_chain(self) -> list[crypto.X509] | None:
        return self.chain


class FakeTLSTransport(StringTransport):
    """What the client protocol sees of a TLS connection when it has ended."""

    def __init__(self, chain: list[crypto.X509] | None = None) -> None:
        super().__init__()
        self.handle = _Handle(chain)
        alsoProvides(self, ISSLTransport)

    def getHandle(self) -> Any:
        return self.handle


def _mismatch(hostname: str) -> Failure:
    from service_identity import VerificationError
    from service_identity.exceptions import DNSMismatch
    from service_identity.hazmat import DNS_ID

    return Failure(VerificationError(errors=[DNSMismatch(mismatched_id=DNS_ID(hostname))]))


def test_a_certificate_for_other_names_says_which_and_is_permanent():
    transport = FakeTLSTransport([_certificate(["localhost", "chat.internal"], ["127.0.0.1"])])
    early = ended_before_welcome(_mismatch("chat.example.org"), transport, True, None)
    assert early.permanent
    assert early.message == (
        "the server's TLS certificate is not valid for chat.example.org "
        "(it is for localhost, chat.internal, 127.0.0.1); check the host name in --server"
    )


def test_certificate_names_are_cleaned_before_they_reach_a_terminal():
    transport = FakeTLSTransport([_certificate(["evil\x1b[2J.example"], [])])
    early = ended_before_welcome(_mismatch("chat.example.org"), transport, True, None)
    assert "\x1b" not in early.message


def test_tls_to_a_plain_port_suggests_the_plain_address_and_is_permanent():
    reason = Failure(SSL.Error([("SSL routines", "", "wrong version number")]))
    early = ended_before_welcome(reason, FakeTLSTransport(), False, "chat.example.org:9999")
    assert early.permanent
    assert early.message == (
        "the server did not answer in TLS: is it a plain port? try --server chat.example.org:9999"
    )


def test_an_untrusted_certificate_is_permanent():
    reason = Failure(SSL.Error([("SSL routines", "", "certificate verify failed")]))
    early = ended_before_welcome(reason, FakeTLSTransport(), False, None)
    assert early.permanent and "not trusted" in early.message


def test_other_early_ends_are_retried():
    early = ended_before_welcome(Failure(ConnectionLost()), object(), True, "tls:h:1")
    assert not early.permanent and early.message == "the connection dropped"
    spoke = ended_before_welcome(Failure(ConnectionDone()), object(), True, "tls:h:1")
    assert spoke.message == "the server closed the connection"  # it spoke: not TLS


@pytest.mark.parametrize(
    ("server", "other"),
    [
        ("localhost:9999", "tls:localhost:9999"),
        ("tcp:chat.example.org:9999", "tls:chat.example.org:9999"),
        ("tls:chat.example.org:9999:trustRoots=trust", "chat.example.org:9999"),
        ("ssl:127.0.0.1:9999", "127.0.0.1:9999"),
        ("unix:/run/chat.sock", None),
        ("[::1]:9999", None),
    ],
)
def test_alternative_server(server: str, other: str | None) -> None:
    assert alternative_server(server) == other


def test_dash_h_is_help(capsys: pytest.CaptureFixture[str]) -> None:
    from twisted_chat.client.main import Options

    with pytest.raises(SystemExit) as exit_:
        Options().parseOptions(["-h"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "-h, --help" in out and "--connect-timeout" in out

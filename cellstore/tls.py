"""TLS for every listener and every client of a cell, and a throwaway CA to try it with.

A server is given its certificate chain and key (`--tls-cert`, `--tls-key`, PEM); a client is
given the CA that signed the servers' certificates (`--tls-ca`, or `OMEGA_CA`) and verifies the
server's certificate against it and against the address it dialled (the certificate must name
that IP or host). Nothing falls back to plain http on its own: a component without certificates
refuses to start unless told `--insecure`, and then says so loudly in its log (`insecure`).
Clients are not asked for certificates: they prove who they are with a bearer token
(`cellstore.http`), which TLS keeps off the wire.

`make_ca` and `issue` write a CA and server certificates with `cryptography`, as `omega up` does
in its data dir and as the README's multi-host set-up does with `omega tls`. Keys and
certificates are written 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import structlog

if TYPE_CHECKING:
    import ssl

log = structlog.get_logger("cellstore.tls")

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
CERT_DAYS = 825


class TlsError(Exception):
    """Certificates missing, unreadable or not a pair; the message names the flag."""


@attrs.frozen
class TlsFiles:
    """The PEM files of one component: its own certificate and key (a server; None for a
    client only) and the CA it trusts (None: a server that dials nothing)."""

    cert: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    key: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    ca: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))

    def check(self, *, serving: bool, dialing: bool) -> None:
        """Raise `TlsError` naming the flag if a file this component needs is missing: a
        certificate and key to serve, the CA to dial."""
        needed = [("--tls-ca", self.ca)] if dialing else []
        if serving:
            needed += [("--tls-cert", self.cert), ("--tls-key", self.key)]
        for flag, path in needed:
            if path is None:
                raise TlsError(f"{flag} is required (or --insecure for plain http)")
            if not path.is_file():
                raise TlsError(f"{flag} {path}: no such file")

    def serve_with(self, config: Any) -> None:
        """Make a hypercorn `Config` serve https with this certificate and key."""
        config.certfile = str(self.cert)
        config.keyfile = str(self.key)

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only this CA and checks the server's name."""
        return client_context(self.ca)

    def to_json(self) -> dict[str, str]:
        return {k: str(v) for k, v in attrs.asdict(self).items() if v is not None}


def client_context(ca: Path | str | None) -> ssl.SSLContext:
    """Verify servers against `ca` only (None: the system's trust store), names checked."""
    import ssl

    context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def warn_insecure(component: str, address: str) -> None:
    """What every component says when it was told to serve plain http."""
    log.warning(
        "insecure",
        component=component,
        address=address,
        message="serving PLAIN HTTP (--insecure): bearer tokens cross the network in clear "
        "text and anyone on the path can replay them",
    )


# -- a throwaway CA ---------------------------------------------------------------------------


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def make_ca(directory: Path, name: str = "omega-cell CA") -> Path:
    """Write a new CA (`ca.pem`, `ca-key.pem`, 0600) into `directory`; the CA's path."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_private(
        directory / CA_KEY,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    _write_private(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
    return directory / CA_CERT


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*\.?")


def issue(ca_dir: Path, out: Path, name: str, hosts: Sequence[str]) -> TlsFiles:
    """Sign a server certificate for `hosts` (IP addresses or DNS names, all in its
    subjectAltName) with the CA in `ca_dir`; write `out/NAME.pem` and `out/NAME-key.pem`
    (0600). The files of a server that trusts the same CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not hosts:
        raise TlsError("a certificate needs at least one --host (IP address or DNS name)")
    ca_cert = x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TlsError(f"{ca_dir / CA_KEY}: not the EC key `make_ca` writes")
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
        except ValueError:
            if not _DNS_NAME.fullmatch(host):
                # A name no client can dial would make a certificate no client accepts.
                raise TlsError(
                    f"--host {host!r} is neither an IP address nor a DNS name (letters, "
                    "digits and '-' in dot-separated labels, optionally '*.' first)"
                ) from None
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    _write_private(
        out / f"{name}-key.pem",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    _write_private(out / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
    return TlsFiles(out / f"{name}.pem", out / f"{name}-key.pem", ca_dir / CA_CERT)

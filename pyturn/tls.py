"""TLS server context from reTurn's keys (TlsServerCertificateFilename, TlsServerPrivateKeyFilename,
TlsPrivateKeyPassword, TlsTempDhFilename), TLS 1.2 minimum, RFC 7443 ALPN."""

from __future__ import annotations

import logging
import os
import ssl

from pyturn.config import Config
from pyturn.errors import PyturnError

log = logging.getLogger(__name__)

ALPN_PROTOCOLS = ["stun.turn", "stun.nat-discovery"]  # RFC 7443 §6


class TlsSetupError(PyturnError):
    """The certificate, key or password cannot be used."""


def make_server_context(config: Config) -> ssl.SSLContext:
    """A fresh server context; called again on SIGHUP so new connections get a renewed certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    certificate = config.tls_server_certificate_filename
    key = config.tls_server_private_key_filename or certificate  # reTurn: empty key name = key in the cert file
    password = config.tls_private_key_password or None
    try:
        context.load_cert_chain(certificate, key, password=password)
    except (OSError, ssl.SSLError) as error:
        raise TlsSetupError(f"cannot load TLS certificate {certificate!r} / key {key!r}: {error}") from error
    dh_file = config.tls_temp_dh_filename
    if dh_file:
        if os.path.exists(dh_file):
            try:
                context.load_dh_params(dh_file)
            except (OSError, ssl.SSLError) as error:
                log.warning("TlsTempDhFilename %s not loaded (%s); ECDHE key exchange is used", dh_file, error)
        else:
            log.warning("TlsTempDhFilename %s does not exist; ECDHE key exchange is used", dh_file)
    context.set_alpn_protocols(ALPN_PROTOCOLS)
    return context

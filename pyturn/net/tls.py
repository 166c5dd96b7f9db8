"""TLS server context from reTurn's keys (TlsServerCertificateFilename, TlsServerPrivateKeyFilename,
TlsPrivateKeyPassword, TlsTempDhFilename), TLS 1.2 minimum, RFC 7443 ALPN, and certificate reload.

Reload keeps the listening SSLContext object (the event loop holds it) and moves each new handshake onto the
latest context from the ClientHello callback (OpenSSL's servername callback runs with or without SNI). A context
is only swapped in after it loaded completely, so a bad new certificate never disturbs the one in service.
"""

from __future__ import annotations

import logging
import os
import ssl

from pyturn.config import Config
from pyturn.errors import PyturnError

log = logging.getLogger(__name__)

ALPN_PROTOCOLS = ["stun.turn", "stun.nat-discovery"]  # RFC 7443 §6
HANDSHAKE_TIMEOUT = 10.0  # seconds; reTurn has none, so a silent client could hold a connection forever


class TlsSetupError(PyturnError):
    """The certificate, key or password cannot be used."""


def make_server_context(config: Config) -> ssl.SSLContext:
    """A fresh server context; raises TlsSetupError when the certificate, key or password is unusable."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    certificate = config.tls_server_certificate_filename
    key = config.tls_server_private_key_filename or certificate  # reTurn: empty key name = key in the cert file
    try:
        # Always a string: with None OpenSSL would prompt on the terminal for an encrypted key's passphrase.
        context.load_cert_chain(certificate, key, password=config.tls_private_key_password)
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


class ReloadableContext:
    """The context the TLS listeners were created with, plus the one new handshakes actually use."""

    __slots__ = ("current", "listening")

    def __init__(self, listening: ssl.SSLContext) -> None:
        self.listening = listening
        self.current = listening
        if listening.sni_callback is None:  # a caller's own callback is left alone (no reload then)
            listening.sni_callback = self._select

    @property
    def reloadable(self) -> bool:
        return self.listening.sni_callback == self._select

    def _select(self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                context: ssl.SSLContext) -> None:
        current = self.current
        if current is not context:
            connection.context = current

    def swap(self, context: ssl.SSLContext) -> bool:
        """New handshakes use `context` from now on; established connections keep theirs."""
        if not self.reloadable:
            log.error("TLS context not replaced: the listening context has a caller's own sni_callback")
            return False
        self.current = context
        return True

    def reload(self, config: Config) -> bool:
        """Rebuild from the config's files; on failure log an error and keep the context in service."""
        try:
            context = make_server_context(config)
        except TlsSetupError as error:
            log.error("TLS certificate not reloaded, the old one stays in service: %s", error)
            return False
        if not self.swap(context):
            return False
        log.info("TLS certificate reloaded from %s", config.tls_server_certificate_filename)
        return True

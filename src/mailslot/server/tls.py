"""Kept so that ``from mailslot.server import tls`` goes on working: the TLS code lives in the
:mod:`mailslot.tls` package now (policy in :mod:`mailslot.tls.context`)."""

from mailslot.tls.certificates import CertificateError as CertificateError
from mailslot.tls.context import GROUPS as GROUPS
from mailslot.tls.context import INTERMEDIATE_CIPHERS as INTERMEDIATE_CIPHERS
from mailslot.tls.context import Profile as Profile
from mailslot.tls.context import TlsContexts as TlsContexts
from mailslot.tls.context import TlsPolicyError as TlsPolicyError
from mailslot.tls.context import policy_context as policy_context
from mailslot.tls.context import server_context as server_context
from mailslot.tls.context import set_groups as set_groups

"""The e2e fixtures the client's tests reuse: the real daemon in-process
(`secure_uvloop`: STARTTLS, SMTPS and submission listeners, a trustme CA,
a credentials table) as the peer to relay to."""

from tests.e2e.conftest import daemon  # noqa: F401  (fixture)
from tests.e2e.inproc import secure_uvloop  # noqa: F401  (fixture)

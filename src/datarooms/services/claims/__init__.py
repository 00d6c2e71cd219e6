"""The claims service: save claims into collections and query them, IXO's claims-bot shape.

A thin REST layer (:mod:`.api`) over :mod:`.handler`, which applies the state bot's
authentication (OpenID, :mod:`datarooms.services.openid`) and access rules (a joined
member reads, a writer saves) and calls ``client.claims``. See docs/evidence.md.
"""

from datarooms.services.claims.service import ClaimsBot, ClaimsService

__all__ = ["ClaimsBot", "ClaimsService"]

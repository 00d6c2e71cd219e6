"""Why a UCAN was refused: one errcode per reason, with its HTTP status."""

from __future__ import annotations

from datarooms.errors import UnauthorizedError

#: errcode -> HTTP status. 401: the token itself is no good (send another);
#: 403: the token is genuine but does not grant this request.
STATUS = {
    "DR_UCAN_MALFORMED": 401,
    "DR_UCAN_TOO_LARGE": 401,
    "DR_UCAN_BAD_SIGNATURE": 401,
    "DR_UCAN_UNKNOWN_DID_METHOD": 401,
    "DR_UCAN_EXPIRED": 401,
    "DR_UCAN_NOT_YET_VALID": 401,
    "DR_UCAN_REPLAYED": 401,
    "DR_UCAN_LIFETIME": 401,
    "DR_UCAN_KEY": 500,
    "DR_UCAN_WRONG_AUDIENCE": 403,
    "DR_UCAN_BROKEN_CHAIN": 403,
    "DR_UCAN_WIDENS": 403,
    "DR_UCAN_REVOKED": 403,
    "DR_UCAN_POLICY": 403,
    "DR_UCAN_WRONG_ROOM": 403,
    "DR_UCAN_WRONG_COMMAND": 403,
    "DR_UCAN_NOT_ALLOWED": 403,
    "DR_UCAN_BUSY": 429,
}


class UcanError(UnauthorizedError):
    """A UCAN refused; ``errcode`` names the reason (see :data:`STATUS`)."""

    def __init__(self, message: str, *, errcode: str) -> None:
        super().__init__(message, errcode=errcode)
        self.http_status = STATUS.get(errcode, 401)

"""Hub errors as exceptions: the hub's {"error": {"code", "message"}} with its HTTP status."""

from __future__ import annotations


class HubError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{message} ({status} {code})")
        self.status, self.code, self.message = status, code, message


class BadRequest(HubError):
    pass


class Unauthorized(HubError):
    pass


class Forbidden(HubError):
    pass


class NotFound(HubError):
    pass


class Conflict(HubError):
    pass


class TooLarge(HubError):
    pass


class InvalidAdapter(HubError):
    pass


BY_STATUS = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 413: TooLarge}


def error_for(status: int, code: str, message: str) -> HubError:
    if code == "invalid_adapter":
        return InvalidAdapter(status, code, message)
    return BY_STATUS.get(status, HubError)(status, code, message)

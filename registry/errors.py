"""Domain errors. Each carries a stable machine code and a message a person can act on.

The registry knows nothing of HTTP; hub/ maps each class to a status code.
"""


class RegistryError(Exception):
    code = "error"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidRequest(RegistryError):
    code = "invalid_request"


class InvalidName(RegistryError):
    code = "invalid_name"


class InvalidAdapter(RegistryError):
    code = "invalid_adapter"


class TooLarge(RegistryError):
    code = "too_large"


class NotFound(RegistryError):
    code = "not_found"

    def __init__(self, message: str, code: str | None = None, moved_to: str | None = None):
        super().__init__(message, code)
        self.moved_to = moved_to  # the repo id an adapter moved to (the HTTP layer redirects there)


class Unauthorized(RegistryError):
    code = "unauthorized"


class Forbidden(RegistryError):
    code = "forbidden"


class Conflict(RegistryError):
    code = "conflict"

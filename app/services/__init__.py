"""The domain, free of Flask. Services read through `access`, write through the models and
`audit`, and flush; they never commit (the request or CLI command does, once)."""


class DomainError(Exception):
    """A refusal a person can act on; `field` names the form field it belongs to, if any."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(DomainError):
    """The object does not exist or is outside the user's scope; both look the same."""

    def __init__(self, message: str = "Not found."):
        super().__init__(message)


class Forbidden(DomainError):
    """Visible, but this user or agency may not do that."""


class Conflict(DomainError):
    """Someone else changed the object since it was loaded."""

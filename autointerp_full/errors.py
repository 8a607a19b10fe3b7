"""Exceptions shared by every stage."""


class UserError(Exception):
    """A problem with the user's input or environment, shown as one line without a traceback.

    Name the parameter or file at fault in the message, e.g.
    ``UserError("--hookpoints: unknown module 'layers.99'; closest: layers.9, layers.19")``.
    """


class MissingExtraError(UserError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{package}' package: pip install 'autointerp-full[{extra}]'"
        )


def one_line(exc: BaseException, secret: str | None = None, limit: int = 300) -> str:
    """An exception's message on one line, with `secret` (a token) masked before trimming."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if secret:
        text = text.replace(secret, "***")
    return text[:limit]

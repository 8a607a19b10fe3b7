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

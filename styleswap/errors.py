"""Errors that the command-line programs turn into one-line messages with exit code 2."""


class StyleSwapError(ValueError):
    """Bad input or a refused operation. The message names the file and the problem."""


class VerificationError(StyleSwapError):
    """A dataset folder does not match its manifest (exit code 1)."""

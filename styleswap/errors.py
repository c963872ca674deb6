"""Errors that the command-line programs turn into one-line messages with exit code 2."""


class StyleSwapError(ValueError):
    """Bad input or a refused operation. The message names the file and the problem."""


class VerificationError(StyleSwapError):
    """A dataset folder does not match its manifest (exit code 1)."""


def one_line(err: BaseException) -> str:
    """The message of an error as one line: a DataLoader or process-pool worker's re-raise carries
    the original traceback, of which only the last ``StyleSwapError: msg`` line is the message; a
    newline inside a message (a file name may hold one) is shown escaped."""
    text = str(err).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "StyleSwapError: " in ln or "VerificationError: " in ln:
            return ln.split("Error: ", 1)[1]
    return text.replace("\n", "\\n") if text else err.__class__.__name__

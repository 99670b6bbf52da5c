"""One exception type for problems the user can fix, so every face (CLI, widgets) can show it plainly."""


class NapariUNetError(ValueError):
    """Bad input or state that the user can fix; the message names the problem and the fix.

    The CLI prints it as one line and exits non-zero; the widgets show it as a napari notification.
    """


class ModelLoadError(NapariUNetError):
    """A model file is missing, corrupt, or refused by Keras safe mode."""


class Cancelled(Exception):
    """Raised inside long work when the caller's cancel check says stop."""

"""The two errors a user's input can raise, shared by every entry point.

- `InputError`: the input itself is unusable (an unreadable image or clip, a missing file);
  the CLI prints it, the HTTP service answers 400.
- `OptionError`: an option's value is wrong (side, box, focal, smoothing, detector, refine);
  the CLI prints it, the HTTP service answers 422.

Both are ValueErrors so that callers outside the backend can catch either as one. `Cancelled`
is raised where work stops because its caller asked. Imports nothing.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user (unreadable image, bad file); the message says what to fix."""


class OptionError(ValueError):
    """A bad option value (box, side, focal, smoothing, ...); the message says what to fix."""


class Cancelled(Exception):
    """Work stopped because its caller asked (a cancel event set, a client gone)."""

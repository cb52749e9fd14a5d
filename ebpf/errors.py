"""The content watchers' errors.

WatcherError            a content watcher cannot run
├── EbpfUnavailable     the probe cannot load here (the reason is the text)
└── InotifyError        inotify refused to set up a watch
"""

from __future__ import annotations


class WatcherError(Exception):
    """A content watcher cannot run."""


class EbpfUnavailable(WatcherError):
    """The eBPF probe cannot be loaded; the message is a one-line reason."""


class InotifyError(WatcherError):
    """inotify could not be initialised or a watch could not be added."""

"""eBPF content watcher: sees containerd commit and delete blobs as it happens.

`probe` holds the bcc program and its loader, `records` decodes what the
probe sends, `watcher` offers the eBPF watcher, its inotify fallback and
`open_watcher`, which picks one; `pid` finds containerd's host pid.
"""

"""The operator's side of the control channel: ``client`` (requests, replies, event streams)
and ``logs`` (instances' log files, read directly)."""

"""Store tests: the shared contract suite and Maildir-specific behaviour."""

"""mailslot's load generator and the side-by-side comparison with Dovecot (issue 4).

``python -m benchmarks.run --help``; docs/benchmarks.md explains the figures.
"""

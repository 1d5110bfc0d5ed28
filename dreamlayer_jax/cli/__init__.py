"""Command-line entry points (`dreamlayer-sample`, `dreamlayer-train`)."""

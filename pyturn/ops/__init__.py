"""The `pyturn` command and its process plumbing: CLI, daemon, workers, logging keys, helper commands, probe."""

"""The `mla` command."""

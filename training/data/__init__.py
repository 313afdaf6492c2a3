"""Datasets: the `--data SPEC` parser, the demo generator, the decode cache, torch loaders."""

"""Out-of-distribution benchmark (issue 27): OOD sets as real media, logit detectors, OpenOOD v1.5 metrics."""

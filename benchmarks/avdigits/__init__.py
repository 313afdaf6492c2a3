"""AV-digits: real spoken digits (FSDD) paired with real handwritten digits (MNIST)."""

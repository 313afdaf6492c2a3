"""What `make bench-espeak` speaks, with nothing else imported: AV-digits' build reads it to keep its synthetic
training voices apart from the benchmark's, and runs in the serve-only install (`make serve` has no psutil or httpx)."""

from __future__ import annotations

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")  # the labels, spoken
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbcwmd")
VARIANTS = ("m1", "f2", "m3", "f4")  # espeak-ng voice variants the benchmark tests with and training never uses

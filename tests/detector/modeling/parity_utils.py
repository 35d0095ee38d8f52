"""The parity tests' torchvision references: bench/reference.py builds them (the benchmarks compare with
the same models); tests sit on top of bench, never the other way round."""

from bench.reference import REFERENCES, torchvision_reference  # noqa: F401

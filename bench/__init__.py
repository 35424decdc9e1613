"""Benchmarks that compare sessiond against a naive baseline measured in the
same run. See ``bench/README.md``."""

# Shortcuts for commands documented in README.md.
.PHONY: bench bench-quick best

# Benchmarks against the reference loop, scikit-learn and the matmul limit, plus memory and
# `dvc repro` time; writes reports/benchmarks.json and the table in README.md.
bench:
	python benchmarks/run.py

bench-quick:
	python benchmarks/run.py --quick

# Shortcuts for commands documented in README.md and docs/
.PHONY: bench bench-quick best committee committee-continue alarm-quality share-gaps kernel-ops behaviour-seeds \
	committee-tta-search committee-diversity-search

# The `best` preset (docs/results.md): an MLP only, 784-1024-1024-1024-10 with dropout, trained
# for 250 epochs on elastically distorted (Simard et al. 2003) and randomly rotated, scaled and
# shifted digits, Adam with a cosine schedule, on both cores (train.threads=2). Chosen by
# validation accuracy only (docs/results.md, "the validation search"). `make best` runs it as the
# DVC experiment `best`, tracked in MLflow, and records its test accuracy, time and machine in
# results/best.json (scripts/record_result.py). Like every experiment it never moves @champion by
# itself: its last line and reports/promotion.json say `would promote` or `would keep`. To promote
# it, through the same gates: python -m pipeline promote --run <the run_id in reports/promotion.json>
RECIPE = -S 'model.hidden=[1024,1024,1024]' -S model.dropout=0.2 \
	-S augment.rotation_deg=10 -S augment.scale=0.1 -S augment.crop_padding=2 \
	-S augment.elastic_alpha=34 -S augment.elastic_sigma=4 -S augment.interpolation=bilinear \
	-S train.lr=0.001 -S train.lr_schedule=cosine -S train.batch_size=256 -S train.threads=2
BEST_PARAMS = $(RECIPE) -S train.epochs=250

# Benchmarks against the reference loop, scikit-learn and the matmul limit, plus memory and
# `dvc repro` time; writes reports/benchmarks.json and the table in docs/benchmarks.md.
bench:
	python benchmarks/run.py

bench-quick:
	python benchmarks/run.py --quick

best:
	python scripts/record_result.py best reports/metrics.json -- \
		dvc exp run -f -n best $(BEST_PARAMS)

# The committee preset: five MLPs of the `best` recipe, one per seed of committee.seeds
# (committee/dvc.yaml), each trained 150 epochs, the most that lets the five fit the 3-hour budget
# on the 2-core machine; they vote by their mean softmax and are logged and registered as one
# model, scored and reported (committee/reports/); results/committee.json.
# Like `make best` it never moves @champion by itself: committee/reports/promotion.json says
# `would promote` or `would keep`; promote it with python -m pipeline promote --run <its run_id>.
# After an interruption, even of the machine, `make committee-continue` goes on with the params
# `dvc exp run` wrote into params.yaml: finished members are skipped, the interrupted one resumes
# (last.pt), and results/committee.json sums the sittings' cost (scripts/record_result.py).
COMMITTEE_PARAMS = $(RECIPE) -S train.epochs=150

committee:
	python scripts/record_result.py committee committee/reports/metrics.json -- \
		dvc exp run -f -n committee $(COMMITTEE_PARAMS) committee/dvc.yaml

committee-continue:
	python scripts/record_result.py --continue committee committee/reports/metrics.json -- \
		dvc repro committee/dvc.yaml

# The studies behind documented figures (studies/): each target reruns one and regenerates what
# the docs cite. alarm-quality: reports/alarm_quality.json (docs/monitoring.md, about 6 min);
# share-gaps: validate.class_share_tolerance's figures (params.yaml); kernel-ops: the table of
# ops that differ by kernel level (docs/training.md); behaviour-seeds: the ranges the behaviour
# tier allows (docs/quality.md, 14 processes); committee-tta-search:
# results/committee-tta-search.json (docs/results.md, needs `make committee` first);
# committee-diversity-search: results/committee-diversity-search.json (docs/results.md, needs
# `make committee` first; it trains two more 150-epoch members, each as long as a committee member,
# each resuming from its last.pt when interrupted).
alarm-quality:
	python studies/alarm_quality.py

share-gaps:
	python studies/share_gaps.py

kernel-ops:
	python studies/kernel_ops.py

behaviour-seeds:
	python studies/behaviour_seeds.py --seeds 1-13,12345 --jobs 14

committee-tta-search:
	python studies/committee_tta_search.py results/committee-tta-search.json

committee-diversity-search:
	python studies/committee_diversity_search.py train 6
	python studies/committee_diversity_search.py train 7
	python studies/committee_diversity_search.py score results/committee-diversity-search.json

# The pins, requirements/<set>.txt for base, dev, docs, team and gpu: the exact version of
# everything each `pip install` of that set installs (docs/team.md, "Pinned environment").
# pip-compile (pip-tools) resolves with pip itself, so it sees the indexes and local wheels pip
# sees; uv does not. Every extra is resolved together first and each set is then compiled with
# that resolution as its starting pins, so a package two sets share has one version in both:
# README command 1's dev, then docs/team.md's team, changes nothing installed. Pins pyproject.toml
# still allows are kept; `make lock PIP_COMPILE_ARGS=--upgrade` takes the newest allowed instead.
# It runs in a throwaway venv with a pinned pip-tools (and the newer pip that needs), whatever pip
# the user's venv has, on Python 3.11 like CI; the pins hold for Linux x86-64 (pip-compile writes
# the packages this platform needs, without their markers).
PYTHON ?= python3
LOCK_SETS = base dev docs team gpu
# pip-compile does not apply pip's configured constraint (this machine caps torch at 2.14.1 and
# torchvision at 0.29.1), so the torch pair is named here: PyPI's 2.14.1 (the CUDA build) on every
# machine and in CI, one binary everywhere.
LOCK_TORCH = torch==2.14.1 torchvision==0.29.1
PIP_COMPILE_OPTS = --quiet --strip-extras --unsafe-package mnist-mlp-pipeline \
	--no-emit-index-url --no-emit-find-links --no-emit-trusted-host
PIP_COMPILE_ARGS ?=
# pip-compile lists the project itself (dev's mnist-mlp-pipeline[docs]) as "unsafe": dropped,
# `pip install -e .` installs it.
DROP_SELF = import pathlib, sys; p = pathlib.Path(sys.argv[1]); \
	text = p.read_text().split("\n\# The following packages are considered to be unsafe")[0]; \
	p.write_text(text.rstrip("\n") + "\n")

.PHONY: lock
lock:
	@set -eu; \
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "make lock: the pins are for Python 3.11, as CI; run make lock PYTHON=python3.11")'; \
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/pip" install --quiet 'pip-tools[stable]==7.7.0'; \
	export CUSTOM_COMPILE_COMMAND="make lock"; \
	printf '%s\n' $(LOCK_TORCH) >"$$tmp/torch.txt"; \
	mkdir -p requirements; \
	{ cat requirements/*.txt 2>/dev/null || true; } | grep -E '^[A-Za-z0-9._-]+==' | sort -u >"$$tmp/all.txt" || true; \
	echo "make lock: every extra together"; \
	"$$tmp/venv/bin/pip-compile" $(PIP_COMPILE_OPTS) --all-extras -c "$$tmp/torch.txt" $(PIP_COMPILE_ARGS) \
		-o "$$tmp/all.txt" pyproject.toml; \
	for set in $(LOCK_SETS); do \
		echo "make lock: requirements/$$set.txt"; \
		cp "$$tmp/all.txt" "requirements/$$set.txt"; \
		extra=$$([ "$$set" = base ] || echo "--extra $$set"); \
		"$$tmp/venv/bin/pip-compile" $(PIP_COMPILE_OPTS) $$extra -o "requirements/$$set.txt" pyproject.toml; \
		"$$tmp/venv/bin/python" -c '$(DROP_SELF)' "requirements/$$set.txt"; \
	done

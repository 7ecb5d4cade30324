# Shortcuts for commands documented in README.md and docs/
.PHONY: bench bench-quick best committee

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
# After an interruption, `dvc repro committee/dvc.yaml` continues with the params `dvc exp run`
# wrote into params.yaml: finished members are skipped, the interrupted one resumes (last.pt).
COMMITTEE_PARAMS = $(RECIPE) -S train.epochs=150

committee:
	python scripts/record_result.py committee committee/reports/metrics.json -- \
		dvc exp run -f -n committee $(COMMITTEE_PARAMS) committee/dvc.yaml

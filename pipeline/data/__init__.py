"""Data formats and datasets: IDX files, the dataset catalogue, fetching, labelled batches."""

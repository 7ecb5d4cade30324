"""Quality and figures: calibration, robustness, the promotion gate and the report's pictures."""

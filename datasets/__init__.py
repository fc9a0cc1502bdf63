"""occbench.datasets."""

"""occbench.harness."""

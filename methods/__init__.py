"""occbench.methods."""

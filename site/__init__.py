"""occbench.site."""

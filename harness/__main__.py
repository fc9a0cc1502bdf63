"""``python -m occbench.harness`` is the ``occbench`` command."""

from occbench.harness.cli import main

main()

"""``python -m occbench.harness`` is the ``occbench`` command."""

from occbench.harness.cli.main import main

main()

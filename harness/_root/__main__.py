"""``python -m occbench`` is the ``occbench`` command (as ``python -m occbench.harness``)."""

from occbench.harness.cli.main import main

main()

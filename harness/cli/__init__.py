"""The command line: `occbench` and its sub-commands (typer + rich)."""

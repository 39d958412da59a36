"""The `alignkd` command line: composes the command groups each package provides."""

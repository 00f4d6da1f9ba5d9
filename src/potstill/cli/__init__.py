"""The ``potstill`` command line: one module per subcommand, registered in :mod:`potstill.cli.main`."""

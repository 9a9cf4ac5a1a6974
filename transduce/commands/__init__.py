"""Subcommands of the `transduce` command; each module has add_arguments() and run()."""

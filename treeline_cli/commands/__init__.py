"""The ``treeline`` subcommands, one module per group of related commands.

Each module defines click commands; :mod:`treeline_cli.main` assembles them into the group.
Every command gets its settings and its output streams from :mod:`treeline_cli.commands.common`.
"""

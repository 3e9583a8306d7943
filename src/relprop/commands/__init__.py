"""Sub-commands of the ``relprop`` command line; each module defines ``add_parser(subparsers)``."""

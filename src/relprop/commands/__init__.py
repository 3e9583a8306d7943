"""Sub-commands of the ``relprop`` command line; each sub-command's module defines ``add_parser(subparsers)``,
and :mod:`.classifier` holds the model options several of them share."""

"""Sub-commands of the ``relprop`` command line; each sub-command's module defines ``add_parser(subparsers)``.
:mod:`.classifier` holds the model options several of them share; :mod:`.evaluate_plan` and
:mod:`.evaluate_run` are the two steps of ``relprop evaluate``."""

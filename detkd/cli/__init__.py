"""The ``detkd`` command and its subcommands (one module each, each with build_parser() and main())."""

"""The `smartedit` command line: the top layer, above flows/, pipeline/ and model/.

Each module here registers one group of subcommands (``register(subparsers)``) and calls library code
(`pipeline`, `model`) or the model's ``run(config)``; none of the libraries imports this package. Handlers
import heavy libraries themselves, so ``smartedit --help`` stays fast.
"""

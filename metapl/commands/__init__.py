"""The commands: `metapl train | eval | predict | export | label | shard | plot | demo | config | presets` (cli.py
parses them), each in a module of its own. The top layer: nothing below imports it."""

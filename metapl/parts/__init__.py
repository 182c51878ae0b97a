"""The registered parts: data sets (data/), networks (models/) and training methods (methods/), each found by
name in its registry. Parts import the core only (and never one another's families: data/ does not import
methods/ nor models/)."""

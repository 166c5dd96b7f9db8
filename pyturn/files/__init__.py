"""The loaders that turn files into values: the configuration file, user files, shared-secret files."""

"""The handlers behind each ``lowbit`` subcommand: call the library and print its results."""

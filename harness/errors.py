"""One exception type for every input problem the harness reports to a person."""


class HarnessError(Exception):
    """A problem with the user's input (config, weights, prompts, sizes), stated plainly."""

"""The `ovi` command, one module per subcommand: generate, batch, serve, worker, conformance,
weights, tls (`cli/main.py` registers them).

A thin layer: flags are parsed into the same objects the Python API and the server use
(`cli/flags.py` generates the model and sampling flags from `RuntimeOptions` and
`SamplingParams`), and every expected failure becomes one `error:` line and exit code 2.
Heavy imports (torch, fastapi) happen inside the subcommands.
"""


class UsageError(Exception):
    """A bad argument; printed as one `error:` line (exit code 2)."""

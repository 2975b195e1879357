"""Lambda entry point: the function's handler setting is `lambda_function.lambda_handler`.

Lambda imports the handler module from the root of the zip, so this shim sits there and
re-exports the real handler, which lives with the rest of the worker in worker/lambda_function.py.
It is also where the container starts: its imports are made as `worker.startup` says.
"""

from worker.startup import start_up

with start_up():
    from worker.lambda_function import lambda_handler

__all__ = ["lambda_handler"]

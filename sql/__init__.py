"""The project's SQL as package data: `migrations/NNNN_name.sql`, `queries.sql`, `audit/*.sql`.

A package (not a bare folder beside the others) so that `importlib.resources` finds it wherever
it lands: the repository, a built wheel's site-packages, or the Lambda function's /var/task
while coclib sits in the layer's /opt/python. `coclib.sqlfiles` is the only reader.
"""

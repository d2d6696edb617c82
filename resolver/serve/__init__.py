"""Serving: transports, serving processes and their pipe, the admin HTTP API (see README.md).

Never imports the federation side.
"""

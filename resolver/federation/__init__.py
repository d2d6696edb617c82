"""The federation side: model, registry and sources, control, health, policy, locality,
plans and routers, the ``federation:`` config (see README.md).

Knows no sockets or processes; never imports the serving side.
"""

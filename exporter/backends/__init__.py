"""Runtime backends. One backend = one module; heavy imports happen inside each module lazily.

Every backend exposes runners that follow :class:`exporter.backends.base.Runner`.
"""

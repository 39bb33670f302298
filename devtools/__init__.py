"""Developer tooling, not part of the product (the wheel ships ``ari_app`` only).

- :mod:`devtools.sandbox`: a real Asterisk 22 in a Debian chroot (debootstrap, run as root);
  ``scripts/sandbox build|start|stop|restart|reload|status|cli``.
- :mod:`devtools.simulate`: simulated callers placed through the sandbox's ARI.
- :mod:`devtools.demo`: ``scripts/demo``, the whole product on this machine.
- :mod:`devtools.fake_asterisk`: a scripted FastAGI peer over a real socket.
- :mod:`devtools.memory_store`: the in-memory entry store.

Importable wherever the checkout is on the path: the repository's virtual environment (its
editable install adds the checkout: ``dev-mode-dirs`` in pyproject.toml) and the tests.
"""
